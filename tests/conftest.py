"""Shared fixtures: a tiny prepared project (data, base model, demos) built once per session.

Every path of the configuration is pointed into a temporary directory, so tests never touch the
repository's own outputs. Tests run offline (HF_HUB_OFFLINE=1) and with MLflow telemetry off.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"

# pytest-xdist (pyproject's addopts: two workers, each file on one worker, files in the order below): each
# worker gets its share of the cores, so two workers never oversubscribe them. Every process a test starts
# inherits it: torch threads ($BRIDGERL_TORCH_THREADS, what bridgerl.core.threads reads) and the core a vLLM CPU
# engine's threads are bound to. What the environment already sets wins.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    _cores = sorted(os.sched_getaffinity(0))
    _n = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    _per = max(1, len(_cores) // _n)
    _i = int(_WORKER.removeprefix("gw") or 0)
    os.environ.setdefault("BRIDGERL_TORCH_THREADS", str(_per))
    _start = (_i * _per) % len(_cores)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, _cores[_start:_start + _per])))

# Files that run longest go first, so that neither worker is left with a long file at the end (the rest keep
# pytest's order). Measured with `python -m pytest --durations=0` (README, Tests). The two real-model files are
# not first together: test_real_model peaks at ~14 GiB and the comparison test at ~7 GiB (of 24); the container
# build (little memory, longer than test_real_model) runs beside the first, and its worker is busy when the
# other worker takes the comparison.
SLOW_FIRST = [
    "test_real_model.py", "test_containers.py", "test_real_model_compare.py", "test_compare.py", "test_fault_campaign.py",
    "test_dvc_pipeline.py", "test_kfp_pipeline.py", "test_distributed.py", "test_rollout_training.py",
    "test_reward_terms.py",
]


def pytest_configure(config):
    if _WORKER:  # in-process torch too (stages call bridgerl.core.threads.configure; tests that use torch directly)
        import torch

        torch.set_num_threads(int(os.environ["BRIDGERL_TORCH_THREADS"]))


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


# small and fast: every test config starts from params.yaml plus these
FAST = [
    "data.synthetic.n_train=160", "data.synthetic.n_test=24", "data.val_fraction=0.1",
    "model.tiny.pretrain_steps=40", "model.tiny.pretrain_examples=400", "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64", "model.tiny.num_heads=2", "model.tiny.vocab_size=320",
    "tracking.enabled=false", "train.steps=3", "train.prompt_batch=2", "train.demo_batch=3",
    "train.grpo.group_size=3", "train.grpo.max_new_tokens=16", "eval.max_new_tokens=16", "train.eval_every=0",
    "train.save_every=100", "train.lora.r=4", "train.lora.alpha=8",
]


@pytest.fixture(autouse=True)
def _isolated_environment():
    """Each test sees the same environment: in-process code may export variables (mlflow exports
    MLFLOW_TRACKING_URI; a one-process DeepSpeed run sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR)."""
    saved = dict(os.environ)
    for k in ("MLFLOW_TRACKING_URI", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
              "MASTER_PORT", "BRIDGERL_PIPELINE_ID", "KFP_RUN_ID"):
        os.environ.pop(k, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


def path_overrides(root: Path) -> list[str]:
    return [
        f"data.out_dir={root}/data/prepared", f"demos.out_dir={root}/data/demos", f"model.out_dir={root}/models/base",
        f"train.out_dir={root}/models/trained", f"train.checkpoint_dir={root}/checkpoints/train",
        f"train.metrics_file={root}/metrics/train.json", f"train.plots_file={root}/plots/train_curve.csv",
        f"eval.out_dir={root}/eval", f"eval.metrics_file={root}/metrics/eval.json",
        f"registry.out_file={root}/metrics/register.json", f"tracking.local_db={root}/mlruns.db",
    ]


def make_cfg(root: Path, *overrides: str):
    from bridgerl.config import load_config

    return load_config(REPO / "params.yaml", FAST + path_overrides(Path(root)) + list(overrides))


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A directory with data/prepared, models/base and data/demos built by the real stages."""
    from bridgerl.stages import build_demos, init_model, prepare

    root = tmp_path_factory.mktemp("tiny_project")
    cfg = make_cfg(root)
    prepare.run(cfg)
    init_model.run(cfg)
    build_demos.run(cfg)
    return root


@pytest.fixture
def project(tiny_project, tmp_path) -> Path:
    """A private copy of the tiny project for tests that write outputs."""
    import shutil

    root = tmp_path / "proj"
    shutil.copytree(tiny_project, root)
    return root


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m bridgerl ...` with this checkout's src first on the path."""
    e = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    p = subprocess.run([sys.executable, "-m", "bridgerl", *args], cwd=cwd, env=e, capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"bridgerl {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` with a SQLite store and a local artifact root, in its own process group."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, _free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 240.0) -> None:
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "OMP_NUM_THREADS": "1"}
        self.log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}):\n{self._tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {timeout}s:\n{self._tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the group this fixture started (uvicorn + its worker)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()

    def _tail(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")[-3000:]
