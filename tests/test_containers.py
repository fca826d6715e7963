"""The images of docker/, proven: built from local base images with nothing but build arguments, run as
their non-root user, and the bridge pipeline run inside them under kfp.local's DockerRunner.

The end-to-end test needs a container engine (docker; `.ci/run` installs Debian's docker.io and starts it)
and mmdebstrap. It skips with the reason where they are missing, and fails instead under CI (CI=true).
 1. base images, no registry pulls: Debian bookworm from `mmdebstrap --variant=minbase` + `docker import`,
    and a Python base on it (Debian's python3) that also trusts the host's extra CA certificates, for a
    package index reached through a TLS-intercepting proxy (the test's base only, never docker/);
 2. `docker/build.sh cpu mlflow` with build arguments only: those bases, and a local package index
    (PIP_INDEX_URL, TORCH_INDEX_URL) served on 127.0.0.1 from a folder of the locks' wheels, so the
    build itself is air-gapped (`--network host` only reaches that loopback index);
 3. `healthcheck`, one stage into a mounted output folder (as uid 10001: files it can write, group-
    readable), the clear error for an unwritable checkpoint folder, and the MLflow image serving /health;
 4. the bridge pipeline under kfp.local.DockerRunner in the built image, tracking to that MLflow
    container: the registered version, its alias and its provenance tags.
Kept between runs on one machine (BRIDGERL_TEST_CACHE, default ~/.cache/bridgerl-tests): the base images
(by a tag derived from their recipe), the wheel folder (refilled when a lock changes) and docker's layer
cache, so a rerun rebuilds only the project's own small layer. Progress goes to <cache>/last-run.log.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import FAST, REPO

DOCKER = REPO / "docker"
UID = 10001
TAG = "test"
REGISTRY = "bridgerl-test"
CPU_IMAGE = f"{REGISTRY}/bridgerl-cpu:{TAG}"
MLFLOW_IMAGE = f"{REGISTRY}/bridgerl-mlflow:{TAG}"
CACHE = Path(os.environ.get("BRIDGERL_TEST_CACHE", Path.home() / ".cache" / "bridgerl-tests"))
INDEX_PORT = int(os.environ.get("BRIDGERL_TEST_INDEX_PORT", "38517"))  # the local package index the builds use
EXTRA_CA = Path("/usr/local/share/ca-certificates")  # Debian's folder of locally added CA certificates
PYTHON_BASE = """\
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update \\
    && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 passwd ca-certificates \\
    && rm -rf /var/lib/apt/lists/* && update-ca-certificates
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
"""
MMDEBSTRAP = ["mmdebstrap", "--variant=minbase", "--aptopt=Acquire::Check-Valid-Until \"false\"", "bookworm"]


# ------------------------------------------------------------------------------------------------
# fast checks of docker/ (no engine)
# ------------------------------------------------------------------------------------------------
def test_entrypoint_knows_every_bridgerl_command():
    """`docker run IMAGE <command>` runs bridgerl for each CLI command (serve-teacher was missing)."""
    from bridgerl.cli import build_parser

    parser = build_parser()
    [sub] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    case = re.search(r'^\s*""\|-\*\|([\w|-]+)\)', (DOCKER / "entrypoint.sh").read_text(), re.M)
    assert case, "entrypoint.sh: the case line of bridgerl commands"
    assert set(case.group(1).split("|")) == set(sub.choices)


@pytest.mark.parametrize("dockerfile", sorted(p.name for p in DOCKER.glob("*.Dockerfile")))
def test_dockerfiles_build_with_the_legacy_builder_and_offline(dockerfile):
    """No `# syntax=` line (BuildKit would fetch a frontend image from a registry), no BuildKit-only
    instruction flags, every base image a build argument, no download from outside the package index."""
    text = (DOCKER / dockerfile).read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    assert not re.search(r"^(COPY|ADD)\s.*--(chmod|link|parents|exclude)\b", text, re.M)
    assert not re.search(r"^RUN\s+--(mount|network|security)\b", text, re.M)
    assert all(re.fullmatch(r"\$\{\w+\}( AS \w+)?|\w+( AS \w+)?", ln.split(None, 1)[1].strip())
               for ln in text.splitlines() if ln.startswith("FROM ")), "FROM takes build arguments or stages"
    assert "uv python install" not in text and "curl" not in text and "wget" not in text
    lock = f"docker/requirements-{dockerfile.split('.')[0]}.lock"
    assert f"COPY {lock} " in text and (REPO / lock).exists()


def test_build_script_builds_the_named_images_and_goes_on_past_a_failure(tmp_path):
    """docker/build.sh: only the images named; a failing one is reported and does not stop the others."""
    fake = tmp_path / "engine"
    fake.write_text('#!/bin/sh\necho "$*" >> "$0.calls"\ncase "$*" in *gpu.Dockerfile*) exit 1;; esac\n')
    fake.chmod(0o755)
    env = {**os.environ, "BUILDER": str(fake), "REGISTRY": "r.example", "VERSION": "9",
           "PYTHON_IMAGE": "local/python:3.11"}
    p = subprocess.run(["sh", str(DOCKER / "build.sh"), "gpu", "mlflow", "--", "--network", "host"],
                       capture_output=True, text=True, env=env, timeout=60)
    calls = (tmp_path / "engine.calls").read_text().splitlines()
    assert p.returncode == 1 and "failed: r.example/bridgerl-gpu:9" in p.stderr
    assert "built: r.example/bridgerl-mlflow:9" in p.stdout
    assert [c.split("--file ")[1].split()[0] for c in calls] == ["docker/gpu.Dockerfile", "docker/mlflow.Dockerfile"]
    assert all("--build-arg PYTHON_IMAGE=local/python:3.11" in c and c.endswith("--network host .") for c in calls)
    bad = subprocess.run(["sh", str(DOCKER / "build.sh"), "cuda"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "unknown image 'cuda'" in bad.stderr


def test_image_locks_pin_everything_at_the_dev_versions():
    """Each image installs a full lock (`--no-deps`), at requirements/dev.lock's versions where it has them
    (the GPU image: the project's direct dependencies, transformers as vLLM allows)."""
    def pins(path: Path) -> dict[str, str]:
        out = {}
        for ln in path.read_text().splitlines():
            if ln and not ln.startswith("#"):
                name, _, version = ln.partition("==")
                assert version, f"{path.name}: {ln!r} is not pinned"
                out[re.sub(r"[-_.]+", "-", name).lower()] = version
        return out

    dev = pins(REPO / "requirements" / "dev.lock")
    for image in ("cpu", "mlflow"):
        lock = pins(DOCKER / f"requirements-{image}.lock")
        differ = {k: (v, dev[k]) for k, v in lock.items() if k in dev and dev[k] != v}
        assert not differ, f"{image}: versions differ from requirements/dev.lock: {differ}"
    cpu = pins(DOCKER / "requirements-cpu.lock")
    assert cpu["transformers"] == dev["transformers"] and cpu["torch"] == dev["torch"] and "kfp" in cpu
    assert not [k for k in cpu if k.startswith("nvidia-")], "the CPU lock must not pull CUDA wheels"
    gpu_lock = DOCKER / "requirements-gpu.lock"
    if gpu_lock.exists():
        gpu = pins(gpu_lock)
        assert gpu["torch"] == dev["torch"] and "vllm" in gpu and "deepspeed" in gpu
        for k in ("peft", "datasets", "pydantic", "mlflow", "kfp", "accelerate"):
            assert gpu[k] == dev[k], k


def _drop_privileges():
    """In the child: root writes anywhere, so drop the capabilities that let it (a container's user has none)."""
    if os.geteuid() == 0:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH out of the bounding set (PR_CAPBSET_DROP)
            assert libc.prctl(24, cap, 0, 0, 0) == 0, ctypes.get_errno()


def _read_only_folder(tmp_path: Path) -> Path:
    readonly = tmp_path / "mnt"
    readonly.mkdir()
    readonly.chmod(0o555)
    return readonly


def test_unwritable_checkpoint_dir_is_a_clear_error(tmp_path):
    """`bridgerl train` whose checkpoint folder its user cannot write (a pod without a writable volume)
    stops before any work: exit 2, one line naming the parameter, the folder and what to mount."""
    readonly = _read_only_folder(tmp_path)
    p = subprocess.run([sys.executable, "-m", "bridgerl", "train", "-P", str(REPO / "params.yaml"),
                        "-S", f"train.checkpoint_dir={readonly}/run/train"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=120,
                       preexec_fn=_drop_privileges)
    assert p.returncode == 2, p.stderr[-2000:]
    [line] = p.stderr.strip().splitlines()
    assert line.startswith("bridgerl train: error: train.checkpoint_dir = ") and f"{readonly} is not writable" in line
    assert "fsGroup" in line


def test_component_with_unwritable_checkpoint_root_says_so(tmp_path):
    """The Kubeflow train task's working folder under checkpoint_root: one clear line, not a traceback."""
    readonly = _read_only_folder(tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from components.common import bridgerl_cli; "
            "bridgerl_cli('train', 'seed: 0', [], [], workdir=sys.argv[2])")
    p = subprocess.run([sys.executable, "-c", code, str(REPO), f"{readonly}/run-1/train"], capture_output=True,
                       text=True, timeout=120, preexec_fn=_drop_privileges)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.startswith(f"bridgerl train: error: cannot create {readonly}/run-1/train: not writable by uid")


# ------------------------------------------------------------------------------------------------
# the images, built and run (slow: a container engine)
# ------------------------------------------------------------------------------------------------
def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI must run the container test: .ci/run installs docker.io and mmdebstrap)")
    pytest.skip(reason)


def _log(msg: str) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "last-run.log", "a") as f:
        f.write(f"{time.strftime('%H:%M:%S')} {msg}\n")


def _sh(cmd: list[str], *, timeout: float = 600, check: bool = True, log: Path | None = None,
        **kw) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    if log is not None:
        with open(log, "w") as f:
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True, timeout=timeout, **kw)
        out = log.read_text()
        p = subprocess.CompletedProcess(cmd, p.returncode, out, "")
    else:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    _log(f"{time.monotonic() - t0:6.1f}s rc={p.returncode} {' '.join(map(str, cmd))[:160]}")
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))[:300]} exited {p.returncode}:\n"
                             f"{(p.stdout or '')[-4000:]}\n{(p.stderr or '')[-3000:]}")
    return p


def _image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine():
    if shutil.which("docker") is None:
        _unavailable("no container engine: `docker` is not installed (Debian: apt-get install docker.io)")
    p = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                       timeout=60)
    if p.returncode != 0:
        _unavailable(f"no container engine: `docker info` failed ({p.stderr.strip()[:200]}); start dockerd")
    (CACHE / "last-run.log").unlink(missing_ok=True)
    _log(f"docker engine {p.stdout.strip()}")
    return p.stdout.strip()


@pytest.fixture(scope="module")
def base_images(engine, tmp_path_factory) -> str:
    """The Python base image's tag; it and the Debian image under it are built once per recipe."""
    cas = sorted(EXTRA_CA.glob("*.crt")) if EXTRA_CA.is_dir() else []
    recipe = hashlib.sha256("\n".join([*MMDEBSTRAP, PYTHON_BASE, *(c.read_text() for c in cas)]).encode())
    key = recipe.hexdigest()[:12]
    debian, python = f"{REGISTRY}/debian:bookworm-{key}", f"{REGISTRY}/python:3.11-bookworm-{key}"
    if _image_exists(python):
        _log(f"reusing {python}")
        return python
    if not _image_exists(debian):
        if shutil.which("mmdebstrap") is None:
            _unavailable("mmdebstrap is not installed (Debian: apt-get install mmdebstrap): it makes the base image")
        tar = tmp_path_factory.mktemp("debian") / "rootfs.tar"
        _sh([*MMDEBSTRAP, str(tar)], timeout=900)
        _sh(["docker", "import", "--change", 'CMD ["bash"]', str(tar), debian])
        tar.unlink()
    ctx = tmp_path_factory.mktemp("python-base")
    (ctx / "ca").mkdir()
    for c in cas:
        shutil.copy(c, ctx / "ca" / c.name)
    (ctx / "Dockerfile").write_text(PYTHON_BASE)
    _sh(["docker", "build", "--build-arg", f"DEBIAN_IMAGE={debian}", "--tag", python, str(ctx)], timeout=900)
    return python


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class _IndexHandler(http.server.SimpleHTTPRequestHandler):
    """A PEP 503 simple index of one folder of wheels/sdists: /simple/<project>/ lists its files."""

    def do_GET(self):
        m = re.fullmatch(r"/simple/([^/]+)/?", self.path)
        if not m:
            return super().do_GET()
        want = _norm(m.group(1))
        files = [f for f in sorted(os.listdir(self.directory))
                 if _norm(re.split(r"-\d", f, maxsplit=1)[0]) == want]
        if not files:
            return self.send_error(404)
        body = "".join(f'<a href="/{f}">{f}</a><br>\n' for f in files).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def package_index(engine) -> str:
    """A package index on 127.0.0.1 holding exactly the CPU and MLflow images' locked packages, downloaded
    once per lock content into the cache (pip's own configuration on this machine picks the CPU torch)."""
    locks = [DOCKER / "requirements-cpu.lock", DOCKER / "requirements-mlflow.lock"]
    wheels = CACHE / "wheels"
    stamp = wheels / f".complete-{hashlib.sha256(b''.join(p.read_bytes() for p in locks)).hexdigest()[:12]}"
    if not stamp.exists():
        wheels.mkdir(parents=True, exist_ok=True)
        for lock in locks:
            _sh([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels),
                 "-r", str(lock)], timeout=1800)
        torch = [f for f in os.listdir(wheels) if f.startswith("torch-")]
        assert [f for f in torch if "+cpu" in f], f"no CPU torch wheel among {torch}: point pip at one"
        stamp.touch()
    handler = functools.partial(_IndexHandler, directory=str(wheels))
    try:  # a fixed address: build arguments are part of docker's cache key, a new URL would rebuild everything
        server = http.server.ThreadingHTTPServer(("127.0.0.1", INDEX_PORT), handler)
    except OSError as e:
        _log(f"127.0.0.1:{INDEX_PORT} is taken ({e}): another port, so no cached dependency layer is reused")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    server.shutdown()


@pytest.fixture(scope="module")
def images(base_images, package_index, tmp_path_factory) -> dict[str, str]:
    """docker/build.sh cpu mlflow, with nothing but build arguments (in its own environment variables)."""
    env = {**os.environ, "REGISTRY": REGISTRY, "VERSION": TAG, "PYTHON_IMAGE": base_images,
           "PIP_INDEX_URL": package_index, "TORCH_INDEX_URL": package_index}
    log = tmp_path_factory.mktemp("build") / "build.log"
    p = _sh(["sh", str(DOCKER / "build.sh"), "cpu", "mlflow", "--", "--network", "host"], env=env, timeout=2400,
            log=log, check=False)
    shutil.copy(log, CACHE / "last-build.log")
    assert p.returncode == 0, p.stdout[-6000:]
    assert f"built: {CPU_IMAGE} {MLFLOW_IMAGE}" in p.stdout
    return {"cpu": CPU_IMAGE, "mlflow": MLFLOW_IMAGE}


def _shared_folder(path: Path) -> Path:
    """A folder the images' user (gid 10001) can write, as a volume with fsGroup 10001 is in a pod."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, -1, UID)
        path.chmod(0o2775)
    else:
        path.chmod(0o777)
    for parent in path.parents:  # pytest's own folders are private to their owner
        if parent == Path(parent.anchor):
            break
        with contextlib.suppress(PermissionError):
            parent.chmod(parent.stat().st_mode | 0o005)
    return path


@pytest.fixture(scope="module")
def mlflow_server(images, tmp_path_factory):
    """The MLflow image as a server on 127.0.0.1 (host network, its own SQLite store)."""
    port = _free_port()
    name = f"bridgerl-test-mlflow-{os.getpid()}"
    _sh(["docker", "run", "-d", "--rm", "--name", name, "--network", "host", images["mlflow"],
         "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", "sqlite:////home/mlflow/mlflow.db",
         "--artifacts-destination", "/home/mlflow/artifacts", "--serve-artifacts"])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200 and r.read().strip() == b"OK":
                        break
            except OSError:
                pass
            state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", name], capture_output=True,
                                   text=True).stdout.strip()
            if state != "true" or time.monotonic() > deadline:
                logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
                raise AssertionError(f"MLflow container did not answer /health: {logs.stdout[-3000:]}"
                                     f"{logs.stderr[-3000:]}")
            time.sleep(2)
        _log(f"mlflow serving on {url}")
        yield url
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def _run(image: str, *args: str, volumes: dict[Path, str] = {}, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = ["docker", "run", "--rm", "--network", "none"]
    for host, inside in volumes.items():
        cmd += ["-v", f"{host}:{inside}"]
    return _sh([*cmd, image, *args], timeout=timeout, check=False)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_cpu_image_runs_stages_as_its_non_root_user(images, tmp_path):
    cpu = images["cpu"]
    p = _run(cpu, "healthcheck")
    assert p.returncode == 0 and re.match(r"ok 2\.\d+\.\d+\S* cpu", p.stdout.strip()), p.stdout + p.stderr
    user = _run(cpu, "sh", "-c", "id -u; id -g; echo $HF_HUB_OFFLINE $GIT_PYTHON_REFRESH")
    assert user.stdout.split() == [str(UID), str(UID), "1", "quiet"]
    version = _run(cpu, "python", "-c",
                   "import transformers, torch; print(transformers.__version__, torch.__version__)")
    lock = (DOCKER / "requirements-cpu.lock").read_text()
    transformers_v, torch_v = version.stdout.split()
    # the project is its own small layer on top of the dependencies' (a code change pushes ~1 MB, not GBs)
    history = _sh(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}\t{{.Size}}", cpu]).stdout
    sizes = [(line.rsplit("\t", 1)[0], line.rsplit("\t", 1)[1]) for line in history.splitlines()]
    [project] = [size for step, size in sizes if "pip install --no-deps --no-index /tmp/dist/" in step]
    assert len([size for step, size in sizes if "COPY dir:" in step and size.endswith("GB")]) == 1  # /opt/venv
    assert project.endswith(("kB", "MB")) and (project.endswith("kB") or float(project[:-2]) < 10), project
    assert f"\ntransformers=={transformers_v}\n" in lock and torch_v.startswith("2.13.0") and "+cpu" in torch_v

    # one stage into a mounted output folder, as uid 10001
    out = _shared_folder(tmp_path / "out")
    p = _run(cpu, "prepare", *[a for o in FAST for a in ("-S", o)], "-S", "data.out_dir=/out/prepared",
             volumes={out: "/out"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = [f for f in (out / "prepared").rglob("*") if f.is_file()]
    assert files and all(f.stat().st_uid == UID for f in files)
    assert all(f.stat().st_mode & 0o040 for f in files), [oct(f.stat().st_mode) for f in files]  # group-readable
    assert "Bad git executable" not in p.stderr

    # a checkpoint folder its user cannot write: the stage says so before any work
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o755)
    p = _run(cpu, "train", "-S", "train.checkpoint_dir=/mnt/checkpoints/run/train",
             volumes={closed: "/mnt/checkpoints"})
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "train.checkpoint_dir = '/mnt/checkpoints/run/train': /mnt/checkpoints is not writable by uid 10001" \
        in p.stderr


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_bridge_pipeline_runs_in_the_image_under_docker_runner(images, mlflow_server, tmp_path):
    """The whole bridge pipeline in the built CPU image (every task as uid 10001), tracking and registering
    in the MLflow container; the registered version carries the image's commit and the run's provenance."""
    root = _shared_folder(tmp_path / "kfp")
    driver = tmp_path / "driver.py"
    driver.write_text(f"""
import json, os, sys
import kfp.local
os.umask(0o002)  # what this process creates under pipeline_root stays writable by the tasks' group (10001)
sys.path.insert(0, {str(REPO)!r})
kfp.local.init(runner=kfp.local.DockerRunner(network_mode="host"), pipeline_root={str(root)!r})
from pipelines.bridge_pipeline import bridge_pipeline
run = bridge_pipeline(overrides={FAST + ["tracking.enabled=true"]!r}, mlflow_tracking_uri={mlflow_server!r},
                      checkpoint_root={str(root / "ckpt")!r}, train_gpus=0, eval_gpus=0)
print("RESULT", json.dumps({{"registration": dict(run.outputs["registration"].metadata),
                             "metrics": dict(run.outputs["metrics"].metadata)}}))
""")
    env = {**os.environ, "BRIDGERL_CPU_IMAGE": images["cpu"], "BRIDGERL_GPU_IMAGE": images["cpu"],
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    p = _sh([sys.executable, str(driver)], env=env, timeout=1800, check=False, log=tmp_path / "pipeline.log")
    shutil.copy(tmp_path / "pipeline.log", CACHE / "last-pipeline.log")
    assert p.returncode == 0, p.stdout[-8000:]
    [result] = [json.loads(ln.split(" ", 1)[1]) for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert "Bad git executable" not in p.stdout
    reg = result["registration"]
    assert 0.0 <= result["metrics"]["avg_accuracy"] <= 1.0

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    mv = client.get_model_version_by_alias(reg["name"], "challenger")
    assert str(mv.version) == str(reg["version"])
    image_commit = _sh(["docker", "image", "inspect", "-f",
                        "{{index .Config.Labels \"org.opencontainers.image.revision\"}}", images["cpu"]]).stdout.strip()
    tags = mv.tags
    assert tags["bridgerl.state"] == "complete"
    assert tags["git_commit"] == image_commit != "unknown"
    assert tags["method"] == "bridge" and tags["params_hash"] and tags["kubeflow_run_id"]
    assert float(tags["metric.avg_accuracy"]) == pytest.approx(result["metrics"]["avg_accuracy"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    stages = {r.data.tags.get("bridgerl.stage"): r.data.tags.get("bridgerl.pipeline_id") for r in runs}
    assert {"train", "evaluate", "register", "pipeline"} <= set(stages)
    assert len({stages[s] for s in ("train", "evaluate", "register", "pipeline")}) == 1
    # checkpoints landed under checkpoint_root, written by the images' user
    ckpts = list((root / "ckpt").glob("*/train/checkpoints/step-*/state.pt"))
    assert ckpts and all(c.stat().st_uid == UID for c in ckpts)
