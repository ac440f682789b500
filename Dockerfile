# syntax=docker/dockerfile:1
# resnet-stack images. Every serving image runs `python -m serve` on port 8000 as a non-root user:
#   docker build --target cpu -t resnet-serve:cpu .          # python:3.11-slim + the [serve] install (no torch)
#   docker build --target gpu -t resnet-serve:gpu .          # CUDA 13 + [serve-gpu]: onnxruntime-gpu, TensorRT 10
#   docker build --target train-gpu -t resnet-train:gpu .    # CUDA 13 + [train,export]: training and export
#   docker run -p 8000:8000 -v "$PWD/demo_out:/models:ro" -e RESNET_SERVE_MODEL=/models/model.onnx resnet-serve:cpu
# GPU images need an NVIDIA driver of the r580 branch or newer on the host (CUDA 13; TensorRT's and CUDA's release
# notes) and the NVIDIA Container Toolkit: docker run --gpus all ...
# The pins are pyproject.toml's; tests/test_packaging.py checks that the two agree and that hadolint is clean.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---- source: only what `pip install .` needs (see .dockerignore) -------------------------------------------------
FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY resnet/ /src/resnet/
COPY train/ /src/train/
COPY export/ /src/export/
COPY serve/ /src/serve/
COPY clients/ /src/clients/

# ---- CPU: the [serve] install (ONNX Runtime, no torch) in a venv, copied into a clean slim image ------------------
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY --from=source /src /src
WORKDIR /src
RUN python -m pip install --quiet "./[serve]"

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

# ---- GPU base: NVIDIA's CUDA 13 runtime with cuDNN (for onnxruntime-gpu's CUDA provider) --------------------------
FROM ${CUDA_IMAGE} AS gpu-base
# The base image tag pins the Ubuntu release; its python3 follows that release's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 resnet \
    && useradd --system --uid 10001 --gid resnet --no-create-home --shell /usr/sbin/nologin resnet
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# ---- GPU serving: [serve-gpu] = onnxruntime-gpu (CUDA 13 build, never `onnxruntime`) + TensorRT 10 for CUDA 13 ------
FROM gpu-base AS gpu-build
# PyPI's onnxruntime-gpu is the CUDA 12 build; ONNX Runtime publishes the CUDA 13 build on its own feed. Installed
# first from that feed alone (its dependencies come from PyPI in the next step), it satisfies the [serve-gpu] pin.
ARG ORT_CUDA13_INDEX=https://aiinfra.pkgs.visualstudio.com/PublicPackages/_packaging/onnxruntime-cuda-13/pypi/simple/
RUN python3 -m venv /opt/venv \
    && python -m pip install --quiet --no-deps --index-url "${ORT_CUDA13_INDEX}" "onnxruntime-gpu==1.31.1"
COPY --from=source /src /src
WORKDIR /src
RUN python -m pip install --quiet "./[serve-gpu]"

FROM gpu-base AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    RESNET_SERVE_HOST=0.0.0.0 \
    RESNET_SERVE_PORT=8000 \
    RESNET_SERVE_MODEL=/models/model.plan
COPY --from=gpu-build /opt/venv /opt/venv
WORKDIR /srv
VOLUME ["/models"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RESNET_SERVE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["python", "-m", "serve"]

# ---- GPU training and export: [train,export] (torch 2.14.1, a CUDA 13 build; onnxruntime for the parity gates and the
# INT8 quantizer) + the serving image's TensorRT, so the engines `python -m export.trt` builds here deserialize in the
# gpu image ------------------------------------------------------------------------------------------------------------
FROM gpu-base AS train-gpu-build
RUN python3 -m venv /opt/venv
COPY --from=source /src /src
WORKDIR /src
RUN python -m pip install --quiet "./[train,export]" "tensorrt-cu13==10.16.1.11"

FROM gpu-base AS train-gpu
COPY --from=train-gpu-build /opt/venv /opt/venv
WORKDIR /work
VOLUME ["/work"]
USER 10001:10001
#   docker run --gpus all -v "$PWD/runs:/work" resnet-train:gpu -m train.cifar --dataset digits --out /work/digits
#   docker run --gpus all -v "$PWD/runs:/work" resnet-train:gpu -m export.trt /work/digits/model.pt --require-engine
ENTRYPOINT ["python"]
CMD ["-m", "train.cifar", "--help"]

# The default target (a plain `docker build .`) is the CPU image.
FROM cpu
