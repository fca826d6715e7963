# MLflow tracking server for k8s/ (PostgreSQL backend via psycopg2, S3 artifact store via boto3).
# Build from the repository root: docker/build.sh mlflow (docker/README.md). Works with the legacy
# builder and BuildKit.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG WHEELS=/tmp/wheels
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY docker/wheels /tmp/wheels
COPY docker/requirements-mlflow.lock /tmp/requirements.lock
RUN pip install --no-deps --find-links "$WHEELS" -r /tmp/requirements.lock && pip check

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 mlflow \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/mlflow --shell /usr/sbin/nologin mlflow
COPY --from=deps /opt/venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true \
    GIT_PYTHON_REFRESH=quiet
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="bridgerl-mlflow" org.opencontainers.image.version="${VERSION}"
WORKDIR /home/mlflow
USER 10001:10001
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=5)"]
ENTRYPOINT ["mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]
