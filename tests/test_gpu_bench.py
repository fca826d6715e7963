"""The prepared GPU benchmark (benchmarks/gpu, issue 25) runs end to end on the CPU with tiny shapes, so it
cannot rot between the tasks that are lent a GPU: its JSON holds every figure, consistently, and the page
docs/gpu.md is rendered from it (the committed page is either a GPU run's or the 'not yet run' page)."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

GPU = REPO / "benchmarks" / "gpu"


def _load(name):
    sys.path.insert(0, str(GPU))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(GPU))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_bench")
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("OUT", None)
    p = subprocess.run(["bash", str(GPU / "run.sh"), "--tiny", "--out", str(out)], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    return json.loads((out / "results.json").read_text()), (out / "gpu.md").read_text()


def test_tiny_run_measures_every_figure(tiny_run):
    from bridgerl.core.methods import METHOD_NAMES

    res, _ = tiny_run
    assert res["tiny"] and not res["errors"], res["errors"]
    assert {"mlflow", "deepspeed", "vllm", "math_verify", "datasets"} <= set(res["hidden_packages"])
    ex = res["sections"]["exactness"]
    rules = ex["update_rules"]["methods"]
    assert set(rules) == set(METHOD_NAMES) and ex["pass"]
    for name, m in rules.items():
        assert m["nonzero"] and m["max_relative_l2"] <= ex["update_rules"]["tolerance"]["relative_l2"], name
    assert rules["alternating"]["steps"] == 2 and rules["bridge"]["steps"] == 1
    assert {k.split("/")[1] for k in rules["bridge"]["relative_l2"]} == {"theta", "shadow", "w"}
    assert ex["chunked_logprobs"]["response_tokens"] > 0

    sc = res["sections"]["scale_tiny"]
    s = res["settings"]
    rows = s["prompts"] * s["group"]
    for name, m in sc["methods"].items():
        its = m["iterations"]
        assert len(its) == 2 * s["rounds"], name  # A B B A
        for it in its:
            assert it["generated_tokens"] == m["expected_generated_tokens"] == rows * s["new_tokens"]  # EOS ignored
            assert it["trained_tokens"] == m["expected_trained_tokens"], name  # the passes the FLOPs count
            assert min(it["rollout_s"], it["logprobs_s"], it["update_s"]) > 0
            assert it["rollout_s"] + it["logprobs_s"] < it["step_s"]
        d = m["decode"]
        assert d["fraction_of_hbm_bound"] == pytest.approx(d["tokens_per_s"] / d["hbm_bound_tokens_per_s"])
        assert m["update"]["hfu"] == pytest.approx(m["update"]["mfu"] * 4 / 3)
        assert m["plan"]["training_phase_excl_reserve_gb"] > 0
    rz, br = sc["methods"]["rl_zero"], sc["methods"]["bridge"]
    assert [p["what"] for p in br["passes"]] == ["sft", "rl", "rl"] and [p["what"] for p in rz["passes"]] == ["rl"]
    assert br["plan"]["training_state_gb"] > rz["plan"]["training_state_gb"]  # θ̂ and w
    assert sc["bridge_over_rl_zero"]["update_s"] == pytest.approx(br["median"]["update_s"] / rz["median"]["update_s"])


def test_docs_render_from_the_json(tiny_run, tmp_path):
    res, page = tiny_run
    assert "tiny CPU smoke run" in page and "not GPU numbers" in page
    sc = res["sections"]["scale_tiny"]
    for m in ("rl_zero", "bridge"):
        assert f"{sc['methods'][m]['median']['update_s']:.3g}" in page
    assert f"{sc['bridge_over_rl_zero']['step_s']:.2f}x" in page
    render = _load("render")
    assert render.RUN_CALL in page  # how to run it, on every page


def test_committed_page_is_a_gpu_run_or_says_not_run():
    render = _load("render")
    page = (REPO / "docs" / "gpu.md").read_text()
    if "Measured on" in page:
        assert "tiny CPU smoke run" not in page
    else:
        assert page == render.not_run(), "docs/gpu.md: python benchmarks/gpu/render.py --not-run docs/gpu.md"
    assert "docs/gpu.md" in (REPO / "README.md").read_text()


def test_carried_wheels_are_pinned_and_ignored():
    pins = dict(line.split("==") for line in (GPU / "wheels.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    for name in ("pydantic", "pydantic-core"):  # the GPU runs the versions the tiny run here used
        assert pins[name] == md.version(name), f"benchmarks/gpu/wheels.txt: {name} is {md.version(name)} here"
    if shutil.which("git") and (REPO / ".git").exists():
        p = subprocess.run(["git", "check-ignore", "-q", ".whl/pydantic-2-py3-none-any.whl"], cwd=REPO)
        assert p.returncode == 0, ".whl/ must be git-ignored (.gitignore)"
