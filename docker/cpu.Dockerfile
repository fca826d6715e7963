# bridgerl CPU image: every stage on CPU (data, demos, evaluation, registration in the pipeline) and
# the Kubeflow component runtime (kfp). Build from the repository root: docker/build.sh cpu
# (docker/README.md: build arguments, air-gapped builds). Works with the legacy builder and BuildKit.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# dependencies: docker/requirements-cpu.lock (every package pinned), torch from the CPU wheel index or,
# air-gapped, from WHEELS (a find-links folder or URL: docker/wheels/ is copied in and is the default)
FROM ${PYTHON_IMAGE} AS deps
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG WHEELS=/tmp/wheels
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY docker/wheels /tmp/wheels
COPY docker/requirements-cpu.lock /tmp/requirements.lock
# torch from WHEELS when the wheel is there (quietly tried), else from TORCH_INDEX_URL; then the rest
RUN grep '^torch==' /tmp/requirements.lock > /tmp/torch.txt \
    && { pip install --quiet --no-deps --no-index --find-links "$WHEELS" -r /tmp/torch.txt 2>/dev/null \
         || pip install --no-deps --index-url "$TORCH_INDEX_URL" -r /tmp/torch.txt; } \
    && pip install --no-deps --find-links "$WHEELS" -r /tmp/requirements.lock \
    && pip check

# the project as a wheel: a code change rebuilds only this stage and the final image's small last layers
FROM deps AS project
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 bridgerl \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/bridgerl --shell /usr/sbin/nologin bridgerl
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HOME=/home/bridgerl/.cache/huggingface HF_HUB_OFFLINE=1 \
    MLFLOW_DISABLE_TELEMETRY=true GIT_PYTHON_REFRESH=quiet
COPY --from=deps /opt/venv /opt/venv
COPY docker/entrypoint.sh /usr/local/bin/bridgerl-entrypoint
COPY --chown=10001:10001 params.yaml /home/bridgerl/params.yaml
COPY --from=project /dist /tmp/dist
RUN pip install --no-deps --no-index /tmp/dist/*.whl && rm -rf /tmp/dist \
    && python -c "import bridgerl.cli, kfp, torch"
# the revision last: a new commit does not invalidate the cached layers above
ARG GIT_COMMIT=unknown
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="bridgerl-cpu" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.description="bridgerl stages on CPU and the Kubeflow component runtime"
ENV BRIDGERL_GIT_COMMIT=${GIT_COMMIT}
WORKDIR /home/bridgerl
USER 10001:10001
HEALTHCHECK --interval=60s --timeout=30s --start-period=10s --retries=3 CMD ["bridgerl-entrypoint", "healthcheck"]
ENTRYPOINT ["bridgerl-entrypoint"]
CMD ["--help"]
