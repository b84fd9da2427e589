#!/usr/bin/env bash
# `make docker-smoke`: build the images, `docker compose up -d` (API + worker + PostgreSQL), wait for
# health, upload a small fact file, run a tiny job to `succeeded` through the API, check its artifacts,
# then tear everything down (containers, volumes). Prints the build time and the image size.
# Works where Docker Hub and PyTorch's index cannot be reached: the base image is made from Debian
# packages (scripts/docker-base.sh) and torch's CPU wheel comes from what pip on this host can find.
set -euo pipefail
cd "$(dirname "$0")/.."
export BEACON_API_TOKEN=${BEACON_API_TOKEN:-smoke-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')}
export BEACON_DB_PASSWORD=${BEACON_DB_PASSWORD:-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')}
export BEACON_PUBLISH=${BEACON_PUBLISH:-127.0.0.1:18000}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-beaconsmoke}
URL=http://${BEACON_PUBLISH}
say() { printf '[docker-smoke %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# --- a Docker engine and Compose (Debian's packages when missing) ------------------------------------
if ! command -v dockerd >/dev/null && ! docker info >/dev/null 2>&1; then
  say "installing docker.io and docker-compose (Debian)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io docker-compose >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd"
  (nohup dockerd >/tmp/beacon-dockerd.log 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null
fi
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else
  command -v docker-compose >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null
  COMPOSE=(docker-compose)
fi
say "compose: ${COMPOSE[*]}"

# --- build inputs --------------------------------------------------------------------------------------
if [ -z "${BASE_IMAGE:-}" ]; then
  if docker image inspect python:3.11-slim >/dev/null 2>&1 || timeout 60 docker pull -q python:3.11-slim >/dev/null 2>&1; then
    BASE_IMAGE=python:3.11-slim
  else
    say "Docker Hub unreachable: making a base image from Debian packages"
    BASE_IMAGE=$(scripts/docker-base.sh)
  fi
fi
export BASE_IMAGE
rm -rf .docker-build && mkdir -p .docker-build/wheels
if ! timeout 10 python3 -c "import urllib.request; urllib.request.urlopen('https://download.pytorch.org/whl/cpu/', timeout=8)" 2>/dev/null; then
  say "PyTorch's CPU index unreachable: taking torch's CPU wheel from this host's pip"
  export TORCH_INDEX=""
  python3 -m pip download -q --no-deps -d .docker-build/wheels torch==2.13.0+cpu
fi
# The CA roots pip trusts on this host (a TLS proxy's root among them, where there is one), for pip in
# the build stage only: PIP_CERT, else pip's configured cert, else the system bundle.
cert=${PIP_CERT:-$(python3 -m pip config list 2>/dev/null | sed -n "s/^global\.cert='\(.*\)'$/\1/p" | head -1)}
cert=${cert:-/etc/ssl/certs/ca-certificates.crt}
if [ -f "$cert" ]; then cp "$cert" .docker-build/ca.crt; fi

cleanup() {
  say "tearing down"
  "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf .docker-build
}
trap cleanup EXIT

say "building (BASE_IMAGE=$BASE_IMAGE)"
started=$(date +%s)
"${COMPOSE[@]}" build >/tmp/beacon-docker-build.log 2>&1 || { tail -40 /tmp/beacon-docker-build.log; exit 1; }
built=$(( $(date +%s) - started ))
size=$(docker image inspect beacon:local --format '{{.Size}}')
say "built in ${built}s; beacon:local is $((size / 1000000)) MB, beacon-postgres:local $(( $(docker image inspect beacon-postgres:local --format '{{.Size}}') / 1000000 )) MB"

# --- up, healthy, one tiny job -------------------------------------------------------------------------
"${COMPOSE[@]}" up -d
for _ in $(seq 120); do curl -fsS "$URL/healthz" >/dev/null 2>&1 && break; sleep 2; done
curl -fsS "$URL/healthz"; echo
H=(-H "Authorization: Bearer $BEACON_API_TOKEN")
dataset=$(curl -fsS "${H[@]}" -F file=@tests/fixtures/mini_facts.jsonl "$URL/datasets" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
say "uploaded $dataset"
job=$(curl -fsS "${H[@]}" -H 'Content-Type: application/json' -H 'Idempotency-Key: smoke' \
  -d "{\"dataset_id\": \"$dataset\", \"train\": {\"max_steps\": 2, \"save_steps\": 1}}" "$URL/jobs" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
say "job $job"
status=queued
for _ in $(seq 300); do
  status=$(curl -fsS "$URL/jobs/$job" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["status"])')
  case $status in succeeded|failed|cancelled) break ;; esac
  sleep 3
done
curl -fsS "$URL/jobs/$job" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["status"], j["error"], (j["metrics"] or {}).get("summary"))'
[ "$status" = succeeded ] || { "${COMPOSE[@]}" logs --tail 80; exit 1; }
artifacts=$(curl -fsS "$URL/jobs/$job/artifacts" | python3 -c 'import json,sys; print(" ".join(a["path"] for a in json.load(sys.stdin)["data"]))')
for need in run/metrics.json run/eval.parquet run/adapter/adapter_model.safetensors; do
  case " $artifacts " in *" $need "*) ;; *) say "missing artifact $need"; exit 1 ;; esac
done
# The job lives in PostgreSQL, not in a SQLite file on the volume.
"${COMPOSE[@]}" exec -T db psql -U beacon -d beacon -tAc "SELECT status FROM jobs WHERE id = '$job'" | grep -qx succeeded
say "ok: job $job succeeded with its artifacts, in PostgreSQL; image built in ${built}s, $((size / 1000000)) MB"
