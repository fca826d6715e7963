"""benchmarks/bench_trainer.py's fixed-length mode really fixes the lengths: every rollout of every timed
method is train.grpo.max_new_tokens long (the rollout engine ignores EOS), so per-iteration costs compare
the same work; natural mode leaves EOS alone."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO, make_cfg


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_trainer", REPO / "benchmarks" / "bench_trainer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fixed_lengths_generate_max_new_tokens_for_each_method(bench, project):
    cfg = make_cfg(project, "train.grpo.max_new_tokens=12")
    trainers = {m: bench.make(cfg, m, fixed=True) for m in ("rl_zero", "bridge")}
    res = bench.interleaved(trainers, reps=2)
    for m, rows in res.items():
        assert [r[2] for r in rows] == [12.0, 12.0], f"{m}: response lengths {[r[2] for r in rows]}, not fixed"
    assert all(tr.rollout.ignore_eos for tr in trainers.values())


def test_natural_lengths_keep_eos(bench, project):
    tr = bench.make(make_cfg(project, "train.grpo.max_new_tokens=12"), "rl_zero", fixed=False)
    assert tr.rollout.ignore_eos is False
    captured = {}
    generate = tr.rollout.engine.generate

    def spy(*a, **kw):
        captured.update(kw)
        return generate(*a, **kw)

    tr.rollout.engine.generate = spy
    tr.train_step()
    assert captured["ignore_eos"] is False
