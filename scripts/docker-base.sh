#!/usr/bin/env bash
# A local base image for the Dockerfile where Docker Hub cannot be reached: Debian bookworm (Python 3.11)
# from Debian's own packages, by debootstrap, imported into Docker.
#   scripts/docker-base.sh [IMAGE]     (default beacon-base:bookworm; prints the image name)
# Uses the image if it exists already; installs debootstrap (Debian package) when missing (root).
set -euo pipefail
image=${1:-beacon-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$image" >/dev/null 2>&1; then echo "$image"; exit 0; fi
if ! command -v debootstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
fi
root=$(mktemp -d /tmp/beacon-rootfs-XXXXXX)
trap 'rm -rf "$root"' EXIT
# minbase: essential packages + apt; then what the Dockerfile needs: Python 3.11 with venv, TLS roots,
# useradd (passwd).
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
  bookworm "$root" "$mirror" >&2
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$image" >&2
echo "$image"
