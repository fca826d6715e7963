"""`bridgerl compare` end to end on a tiny budget: several methods and a sweep over two seeds share
their inputs, the statistics are computed and the report, results and figures are written."""

from __future__ import annotations

import json

from conftest import make_cfg


def test_compare_two_seeds_statistics_and_report(project):
    from bridgerl.stages import compare

    cfg = make_cfg(project, "train.steps=2", "train.eval_every=1", "train.cold_start_sft_steps=1")
    out = project / "report"
    from bridgerl.cli import build_parser

    # --sweep is repeatable: one command runs every ablation (0.5 is the configuration's λ: no extra arm)
    args = build_parser().parse_args(["compare", "--sweep", "train.bridge.lam=0.5,1", "--sweep", "train.lora.r=2"])
    sweeps = compare.parse_sweeps(args.sweep)
    res = compare.run(cfg, methods=["cold_start", "bridge_frozen_w", "mixed", "bridge"], seeds=[0, 1], out=out,
                      progress=False, sweeps=sweeps, jobs=2)  # two runs at a time, each in its own process
    arms, st = res["arms"], res["statistics"]
    assert list(arms) == ["cold_start", "mixed", "bridge", "bridge bridge.lam=1", "bridge lora.r=2", "bridge_frozen_w"]
    for label, r in arms.items():
        assert r["seeds"] == [0, 1] and len(r["runs"]) == 2
        iv = st["arms"][label]["avg_accuracy"]
        assert iv["lo"] <= iv["mean"] <= iv["hi"]
        totals = st["arms"][label]["totals"]
        assert totals["generated_tokens"] > 0 and totals["trained_tokens"] > 0 and totals["optimizer_steps"] >= 2
    # every method saw the same inputs: one base model, built under OUT/inputs
    assert (out / "inputs" / "data" / "rl_train.jsonl").exists()
    # paired comparisons: the three key ones and the sweep arm against its method, each with a verdict
    pairs = [(c["a"], c["b"]) for c in st["comparisons"]]
    assert pairs == [("bridge", "cold_start"), ("bridge", "bridge_frozen_w"), ("bridge", "mixed"),
                     ("bridge bridge.lam=1", "bridge"), ("bridge lora.r=2", "bridge")]
    per_seed = st["per_seed_accuracy"]
    for c in st["comparisons"]:
        assert abs(c["diff"]["mean"] - (sum(per_seed[c["a"]]) - sum(per_seed[c["b"]])) / 2) < 1e-9
        assert c["verdict"]
    # BRIDGE pays for its shadow: more trained tokens per iteration than the frozen-w ablation
    tot = {k: st["arms"][k]["totals"] for k in arms}
    assert tot["bridge"]["optimizer_steps"] == tot["bridge_frozen_w"]["optimizer_steps"]
    assert st["arms"]["bridge"]["coop_gain"] is not None and st["arms"]["bridge_frozen_w"]["coop_gain"] is None
    md = (out / "report.md").read_text()
    assert "## Verdict" in md and "| bridge bridge.lam=1 |" in md and "| bridge lora.r=2 |" in md and "Wilcoxon" in md
    assert "`--sweep bridge:train.bridge.lam=0.5,1` `--sweep bridge:train.lora.r=2`" in md
    assert "--methods cold_start,bridge_frozen_w,mixed,bridge" in md
    for f in ("heldout_vs_step.png", "heldout_vs_cost.png", "coop_gain.png"):
        assert (out / f).stat().st_size > 1000
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["arms"]) == set(arms) and saved["meta"]["seeds"] == [0, 1]
    assert not any(p.name == "model" for p in (out / "runs").rglob("*")), "models are not kept"
    # a second run finds every run done and only re-renders; --report-only does the same from results.json
    stamp = {p: p.stat().st_mtime for p in (out / "runs").rglob("train.json")}
    compare.run(cfg, methods=["cold_start", "bridge_frozen_w", "mixed", "bridge"], seeds=[0, 1], out=out,
                progress=False, sweeps=sweeps)
    assert stamp == {p: p.stat().st_mtime for p in (out / "runs").rglob("train.json")}
    # the report keeps the time of the invocation that trained the runs
    assert json.loads((out / "results.json").read_text())["meta"]["wall_s"] == saved["meta"]["wall_s"]
    verdicts = md.split("## Verdict")[1].split("##")[0]
    (out / "report.md").unlink()
    compare.rerender(cfg, out)
    assert verdicts in (out / "report.md").read_text()


def test_a_stopped_comparison_leaves_no_worker_running(project):
    """SIGTERM to `bridgerl compare --jobs 2` (a killed job, Ctrl-C) ends its training processes too."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import FAST, REPO, path_overrides

    args = ["-P", str(REPO / "params.yaml")] + [a for o in FAST + path_overrides(project) + ["train.steps=400"]
                                                for a in ("-S", o)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.Popen([sys.executable, "-m", "bridgerl", "compare", "--methods", "rl_zero", "--seeds", "0,1",
                          "--jobs", "2", "--out", str(project / "cmp"), *args], cwd=project, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def children(pid):
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]

    try:
        deadline = time.time() + 240
        while len(workers := [c for c in children(p.pid) if (project / "cmp" / "runs").exists()]) < 2:
            assert time.time() < deadline and p.poll() is None, "the workers never started"
            time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        deadline = time.time() + 30
        while any(os.path.exists(f"/proc/{w}") and open(f"/proc/{w}/stat").read().split()[2] != "Z" for w in workers):
            assert time.time() < deadline, "a worker outlived the comparison"
            time.sleep(0.5)
    finally:
        if p.poll() is None:
            p.kill()


def test_inputs_are_rebuilt_only_for_what_they_are_built_from(tmp_path):
    from bridgerl.stages import compare

    cfg = make_cfg(tmp_path)
    key = compare.inputs_key(cfg)
    assert compare.inputs_key(compare.inputs_cfg(cfg, tmp_path / "elsewhere")) == key  # paths do not count
    assert compare.inputs_key(make_cfg(tmp_path, "train.steps=7", "train.lr_theta=0.5")) == key  # training does not
    for changed in ("data.synthetic.max_ops=3", "model.tiny.pretrain_steps=7", "demos.max_problems=5", "seed=3"):
        assert compare.inputs_key(make_cfg(tmp_path, changed)) != key, changed


# vLLM's CPU attention takes head size 32 (the other tests' tiny model has 16): tests/test_rollout_training.py
VLLM_TINY = ["model.tiny.hidden_size=64", "model.tiny.num_heads=2", "model.tiny.intermediate_size=128",
             "model.tiny.pretrain_steps=150", "train.rollout.backend=vllm", "train.rollout.kv_cache_gb=1",
             "train.rollout.max_model_len=256"]


def test_parallel_runs_with_vllm_rollouts_are_each_logged_once_to_a_tracking_server(tmp_path):
    """`--jobs 2` with vLLM rollouts (a run starts vLLM's engine processes from its worker) and tracking on,
    against a real `mlflow server` (SQLite): every (method, seed) has exactly one train and one evaluate run,
    finished, with its own method and seed; running the comparison again logs nothing new."""
    from conftest import MlflowServer
    from mlflow.tracking import MlflowClient

    from bridgerl.stages import compare

    (tmp_path / "mlflow").mkdir()
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    try:
        cfg = make_cfg(tmp_path, *VLLM_TINY, "tracking.enabled=true", f"tracking.uri={server.uri}",
                       "tracking.experiment=compare-jobs", "train.steps=2", "train.eval_every=1")
        out = tmp_path / "cmp"
        methods, seeds = ["rl_zero", "bridge"], [0]  # two runs at once under --jobs 2 (each one starts vLLM)
        compare.run(cfg, methods=methods, seeds=seeds, out=out, progress=False, jobs=2)
        client = MlflowClient(tracking_uri=server.uri)
        exp = client.get_experiment_by_name("compare-jobs")

        def stage_runs(stage):
            return client.search_runs([exp.experiment_id], f"tags.`bridgerl.stage` = '{stage}'", max_results=1000)

        expected = sorted((m, str(s)) for m in methods for s in seeds)
        train = stage_runs("train")
        assert sorted((r.data.params["train.method"], r.data.params["seed"]) for r in train) == expected
        assert all(r.info.status == "FINISHED" for r in train)
        assert all(r.data.metrics.get("heldout_accuracy") is not None for r in train)
        assert {json.loads((out / "runs" / f"{m}-s{s}" / "train.json").read_text())["rollout_backend"]
                for m in methods for s in seeds} == {"vllm"}
        # every trained model evaluated once, and the base model once (what it solves asked directly)
        evaluate = stage_runs("evaluate")
        assert all(r.info.status == "FINISHED" for r in evaluate)
        of_runs = [r for r in evaluate if r.data.params["train.out_dir"].startswith(str(out / "runs"))]
        assert sorted((r.data.params["train.method"], r.data.params["seed"]) for r in of_runs) == expected
        assert len(evaluate) == len(of_runs) + 1  # and the base model's
        before = {r.info.run_id for r in client.search_runs([exp.experiment_id], max_results=1000)}
        compare.run(cfg, methods=methods, seeds=seeds, out=out, progress=False, jobs=2)  # every run reused
        assert {r.info.run_id for r in client.search_runs([exp.experiment_id], max_results=1000)} == before
    finally:
        server.stop()
