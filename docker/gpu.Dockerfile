# bridgerl GPU image: training (torchrun, DeepSpeed), vLLM generation/evaluation, multi-node job
# launch (kubernetes, kubeflow-trainer-api, kubeflow-training). Build from the repository root:
# docker/build.sh gpu (docker/README.md). Works with the legacy builder and BuildKit.
#
# The base is plain Python, not nvidia/cuda: PyPI's torch 2.13.0 is a CUDA 13 build that brings its own
# CUDA runtime, cuBLAS, cuDNN and NCCL as nvidia-* wheels (pinned in requirements-gpu.lock), so a CUDA
# base image would only add GBs of unused libraries. What a CUDA base still gives is set below: the
# NVIDIA container toolkit mounts the driver (NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES) and
# refuses to start the container on a driver too old for CUDA 13 (NVIDIA_REQUIRE_CUDA) instead of
# failing later inside torch. gcc and libc6-dev are there because Triton (vLLM, torch.compile)
# compiles its small launcher stubs at run time.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG WHEELS=/tmp/wheels
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    DS_BUILD_OPS=0
RUN python -m venv /opt/venv
COPY docker/wheels /tmp/wheels
COPY docker/requirements-gpu.lock /tmp/requirements.lock
RUN pip install --no-deps --find-links "$WHEELS" -r /tmp/requirements.lock && pip check

FROM deps AS project
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

FROM ${PYTHON_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 bridgerl \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/bridgerl --shell /usr/sbin/nologin bridgerl
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HOME=/home/bridgerl/.cache/huggingface HF_HUB_OFFLINE=1 \
    MLFLOW_DISABLE_TELEMETRY=true GIT_PYTHON_REFRESH=quiet NCCL_DEBUG=WARN DS_BUILD_OPS=0 \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility NVIDIA_REQUIRE_CUDA="cuda>=13.0"
COPY --from=deps /opt/venv /opt/venv
COPY docker/entrypoint.sh /usr/local/bin/bridgerl-entrypoint
COPY --chown=10001:10001 params.yaml /home/bridgerl/params.yaml
COPY --from=project /dist /tmp/dist
RUN pip install --no-deps --no-index /tmp/dist/*.whl && rm -rf /tmp/dist \
    && python -c "import bridgerl.launch.k8s, kfp, vllm"
# the revision last: a new commit does not invalidate the cached layers above
ARG GIT_COMMIT=unknown
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="bridgerl-gpu" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.description="bridgerl training and vLLM evaluation on NVIDIA GPUs (CUDA 13)"
ENV BRIDGERL_GIT_COMMIT=${GIT_COMMIT}
WORKDIR /home/bridgerl
USER 10001:10001
HEALTHCHECK --interval=60s --timeout=60s --start-period=30s --retries=3 CMD ["bridgerl-entrypoint", "healthcheck"]
ENTRYPOINT ["bridgerl-entrypoint"]
CMD ["--help"]
