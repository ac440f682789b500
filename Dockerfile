# syntax=docker/dockerfile:1
# resnet-stack serving images. Two targets, both serve `python -m serve` on port 8000 as a non-root user:
#   docker build --target cpu -t resnet-serve:cpu .     # python:3.11-slim + onnxruntime (CPU)
#   docker build --target gpu -t resnet-serve:gpu .     # CUDA runtime + the [gpu] extra (onnxruntime-gpu, tensorrt)
#   docker run -p 8000:8000 -v "$PWD/demo_out:/models:ro" -e RESNET_SERVE_MODEL=/models/model.onnx resnet-serve:cpu
# The install commands are the Makefile's (pinned torch/torchvision first, then this project), which CI runs
# outside Docker on every push; tests/test_packaging.py checks that the two stay the same.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---- source: only what `pip install .` needs (see .dockerignore) -------------------------------------------------
FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY resnet/ /src/resnet/
COPY train/ /src/train/
COPY export/ /src/export/
COPY serve/ /src/serve/
COPY clients/ /src/clients/

# ---- CPU: build a virtual environment, then copy it into a clean slim image ----------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# CPU-only torch wheels keep the image about 2 GB smaller; `--build-arg PIP_EXTRA_INDEX_URL=` uses PyPI's build.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
COPY --from=source /src /src
WORKDIR /src
RUN python -m pip install --quiet .

FROM ${PYTHON_IMAGE} AS cpu
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RESNET_SERVE_HOST=0.0.0.0 \
    RESNET_SERVE_PORT=8000 \
    RESNET_SERVE_MODEL=/models/model.onnx
RUN groupadd --system --gid 10001 resnet \
    && useradd --system --uid 10001 --gid resnet --no-create-home --shell /usr/sbin/nologin resnet
COPY --from=cpu-build /opt/venv /opt/venv
WORKDIR /srv
VOLUME ["/models"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RESNET_SERVE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["python", "-m", "serve"]

# ---- GPU: the same steps on NVIDIA's CUDA runtime (cuDNN for onnxruntime-gpu; TensorRT comes from pip) ---------------
FROM ${CUDA_IMAGE} AS gpu-base
# The base image tag pins the Ubuntu release; its python3 follows that release's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

FROM gpu-base AS gpu-build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv \
    && python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
COPY --from=source /src /src
WORKDIR /src
RUN python -m pip install --quiet "./[gpu]"

FROM gpu-base AS gpu
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    RESNET_SERVE_HOST=0.0.0.0 \
    RESNET_SERVE_PORT=8000 \
    RESNET_SERVE_MODEL=/models/model.plan
RUN groupadd --system --gid 10001 resnet \
    && useradd --system --uid 10001 --gid resnet --no-create-home --shell /usr/sbin/nologin resnet
COPY --from=gpu-build /opt/venv /opt/venv
WORKDIR /srv
VOLUME ["/models"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RESNET_SERVE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["python", "-m", "serve"]

# The default target (a plain `docker build .`) is the CPU image.
FROM cpu
