"""`bridgerl compare`: every method on the same data, base model, demos, budget and seeds; a report
with intervals, paired tests, cost axes and ablations.

The inputs (prepare / init-model / build-demos of the configuration) are built once into OUT/inputs/
and shared by every run, so seed s of every method starts from the same data, base model and
demonstrations and differs only in the method (paired by seed). An *arm* is a method, or a method with
overrides from a sweep (`--sweep train.bridge.lam=0,0.5,1`: one arm per value, each compared with the
method's own arm). For each seed and arm it trains (only `train.method`, `seed` and the arm's overrides
change), evaluates on eval.benchmarks and keeps the run's metrics in OUT/runs/<arm>-s<seed>/ (a finished
run is not redone when the command is run again). Then it writes (bridgerl.comparison):
  report.md       verdicts, accuracy with 95% intervals, paired differences, cost to reach cold-start's
                  accuracy on every cost axis, the cooperative gain
  results.json    every number behind the report (`--report-only` re-renders from it)
  heldout_vs_step.png, heldout_vs_cost.png, coop_gain.png
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridgerl.config import Config, ConfigError, apply_override, parse_override
from bridgerl.core import keys
from bridgerl.core.io import read_json, write_json
from bridgerl.core.methods import METHOD_NAMES, METHODS
from bridgerl.core.stage_table import DEMOS_FILE, RL_TRAIN

DEFAULT_SEEDS = [0, 1, 2, 3, 4]


@dataclass(frozen=True)
class Arm:
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted key -> value (from --sweep)

    @property
    def label(self) -> str:
        if not self.overrides:
            return self.method
        return self.method + " " + ",".join(f"{k.removeprefix('train.')}={v}" for k, v in self.overrides.items())

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=-]+", "_", self.label)


def parse_sweeps(items: list[str] | None) -> list[tuple[str, str, list[Any]]]:
    """`[METHOD:]KEY=V1,V2,...` items → [(method, key, values)] (method default bridge; values parsed as
    YAML, like -S overrides)."""
    out = []
    for item in items or []:
        if "=" not in item or not item.split("=", 1)[1].strip():
            raise ConfigError(f"--sweep {item!r}: expected [METHOD:]KEY=V1,V2,..., e.g. train.bridge.lam=0,0.25,0.5")
        key, vals = item.split("=", 1)
        method, _, key = key.strip().rpartition(":")
        method = method or "bridge"
        if method not in METHODS:
            raise ConfigError(f"--sweep {item!r}: unknown method {method!r} (known: {', '.join(METHOD_NAMES)})")
        out.append((method, key, [parse_override(f"{key}={v}")[1] for v in vals.split(",")]))
    return out


def with_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """The configuration with dotted-key overrides applied and validated (a clear error names the key)."""
    if not overrides:
        return cfg.model_copy(deep=True)
    raw = cfg.model_dump(mode="json")
    for key, value in overrides.items():
        apply_override(raw, keys.parts(key), value)
    try:
        return Config.model_validate(raw)
    except Exception as e:  # pydantic's ValidationError: name the sweep
        first = str(e).splitlines()[1:3]
        raise ConfigError(f"--sweep {', '.join(f'{k}={v}' for k, v in overrides.items())}: invalid "
                          f"({' '.join(s.strip() for s in first)})") from None


def make_arms(cfg: Config, methods: list[str], sweeps: list[tuple[str, str, list[Any]]]) -> list[Arm]:
    """Each method, then for every sweep one arm per value that differs from the configuration's (the
    swept method's own arm is added when --methods lacks it: it is what the sweep is compared with)."""
    arms = [Arm(m) for m in methods]
    for method, key, values in sweeps:
        current = _get(cfg.model_dump(mode="json"), key)
        if Arm(method) not in arms:
            arms.append(Arm(method))
        for v in values:
            arm = Arm(method, {key: v})
            with_overrides(cfg, arm.overrides)  # fail before any training
            if v != current and arm not in arms:
                arms.append(arm)
    return arms


def _get(d: dict, key: str) -> Any:
    value = keys.get(d, key)
    if value is keys.MISSING:
        raise ConfigError(f"--sweep {key}: no such configuration key")
    return value


# ------------------------------------------------------------------------------------------------
# inputs and runs
# ------------------------------------------------------------------------------------------------
def inputs_cfg(cfg: Config, out: Path) -> Config:
    """The configuration with its data, base model and demonstrations under OUT/inputs/."""
    c = cfg.model_copy(deep=True)
    root = out / "inputs"
    c.data.out_dir, c.model.out_dir, c.demos.out_dir = str(root / "data"), str(root / "model"), str(root / "demos")
    c.demos.journal_dir = None
    return c


def inputs_key(cfg: Config) -> str:
    """What the inputs are built from: the seed and the data, model and demos sections (paths aside)."""
    import hashlib

    d = cfg.model_dump(mode="json")
    for section in ("data", "model", "demos"):
        d[section].pop("out_dir", None)
    d["demos"].pop("journal_dir", None)
    blob = json.dumps({k: d[k] for k in ("seed", "data", "model", "demos")}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _ensure_inputs(cfg: Config, root: Path) -> None:
    """Build the inputs under `root`, again when they were built from another configuration."""
    from bridgerl.stages import build_demos, init_model, prepare

    key_file, key = root / "inputs.json", inputs_key(cfg)
    if key_file.exists() and read_json(key_file).get("inputs_key") != key:
        shutil.rmtree(root)
    if not (Path(cfg.data.out_dir) / RL_TRAIN.name).exists():
        prepare.run(cfg)
    if not (Path(cfg.model.out_dir) / "config.json").exists():
        init_model.run(cfg)
    if not (Path(cfg.demos.out_dir) / DEMOS_FILE.name).exists():
        build_demos.run(cfg)
    write_json(key_file, {"inputs_key": key})


def _run_cfg(cfg: Config, arm: Arm, seed: int, run_dir: Path) -> Config:
    c = with_overrides(cfg, arm.overrides)
    c.seed = seed
    c.train.method = arm.method
    c.train.out_dir = str(run_dir / "model")
    c.train.checkpoint_dir = str(run_dir / "checkpoints")
    c.train.metrics_file = str(run_dir / "train.json")
    c.train.plots_file = str(run_dir / "curve.csv")
    c.eval.out_dir = str(run_dir / "eval")
    c.eval.metrics_file = str(run_dir / "eval.json")
    return c


def _load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished children (a rollout engine's own processes)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _one_run(rc: Config, progress: bool) -> bool:
    """Train and evaluate one (arm, seed), unless OUT/runs/... already holds it for this configuration
    (then False)."""
    from bridgerl.comparison import chat
    from bridgerl.stages import evaluate, train

    run_dir = Path(rc.train.metrics_file).parent
    done = run_dir / "run.json"
    key = rc.model_copy(update={"threads": None}).digest()  # threads never change a result
    if done.exists() and read_json(done).get("config_digest") == key:
        return False
    t0, cpu0, load0 = time.perf_counter(), _cpu_s(), _load_avg()
    train.run(rc, progress=progress)
    evaluate.run(rc, progress=progress)
    write_json(run_dir / "chat.json", chat.probe(rc.train.out_dir, rc.model.out_dir))  # plain chat kept
    shutil.rmtree(rc.train.out_dir, ignore_errors=True)
    shutil.rmtree(rc.train.checkpoint_dir, ignore_errors=True)
    shutil.rmtree(rc.eval.out_dir, ignore_errors=True)
    write_json(done, {"config_digest": key, "threads": rc.threads, "wall_s": round(time.perf_counter() - t0, 1),
                      "cpu_s": round(_cpu_s() - cpu0, 1), "load_avg_start": load0,
                      "load_avg_end": _load_avg()})
    return True


def _collect(rc: Config, arm: Arm, tm) -> dict:
    """One run's numbers for results.json (curves carry every cost axis at each held-out point)."""
    from bridgerl.comparison import costs

    run_dir = Path(rc.train.metrics_file).parent
    final, ev, run = read_json(run_dir / "train.json"), read_json(run_dir / "eval.json"), read_json(run_dir / "run.json")
    rows = list(csv.DictReader(open(rc.train.plots_file)))
    kl = [float(r["kl"]) for r in rows if r.get("kl") not in ("", None)]
    chat = run_dir / "chat.json"
    cum = costs.cumulative(rc, arm.method, rows, tm)
    curve = [{**c, "heldout_accuracy": float(r["heldout_accuracy"])}
             for r, c in zip(rows, cum) if r.get("heldout_accuracy") not in ("", None)]
    coop = [[int(r["step"]), float(r["coop_gain"])] for r in rows if r.get("coop_gain") not in ("", None)]
    return {"accuracy": {b: m["accuracy"] for b, m in ev["benchmarks"].items()},
            "wall_time_s": final["wall_time_s"], "peak_memory_mb": final["peak_memory_mb"],
            "state_memory_mb": final["state_memory_mb"], "rollout_backend": final.get("rollout_backend"),
            "curve": curve, "coop_gain": coop, "kl_end": kl[-1] if kl else None,
            "chat": read_json(chat) if chat.exists() else None,
            "totals": {k: cum[-1][k] for k in costs.AXES} if cum else {}, "run": run}


def _worker(tasks, results) -> None:
    """A worker process: runs (index, config) tasks until it gets None; reports (index, error or None).

    Workers are not daemonic (a multiprocessing Pool's are), so a run can start processes of its own
    (vLLM's engine core); a worker stops when the comparison that started it dies (killed, interrupted),
    and SIGTERM unwinds it like Ctrl-C (temporary outputs removed)."""
    import signal
    import traceback

    from bridgerl.core import parent_watch

    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    parent_watch.install("compare (worker)")
    while (task := tasks.get()) is not None:
        i, rc = task
        try:
            results.put((i, _one_run(rc, False), None))
        except Exception:
            results.put((i, False, traceback.format_exc()))
            return


def _run_all(todo: list, jobs: int, progress: bool) -> int:
    """Every (arm, seed) run, one after the other or in `jobs` worker processes (runs are independent);
    returns how many were trained (not reused). The first failed run stops the comparison (runs finished
    before it are kept and reused next time)."""
    import multiprocessing as mp
    import queue

    n = len(todo)
    if jobs <= 1:
        trained = 0
        for i, (arm, seed, rc) in enumerate(todo, 1):
            print(f"compare: run {i}/{n}: {arm.label}, seed {seed}", flush=True)
            trained += _one_run(rc, progress)
        return trained
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    for i, (_, _, rc) in enumerate(todo):
        tasks.put((i, rc))
    workers = [ctx.Process(target=_worker, args=(tasks, results), name=f"compare-worker-{k}")
               for k in range(min(jobs, n))]
    for w in workers:
        tasks.put(None)
        w.start()
    trained = 0
    try:
        for done in range(1, n + 1):
            while True:
                try:
                    i, ran, err = results.get(timeout=2.0)
                    break
                except queue.Empty:
                    dead = [w for w in workers if w.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(f"compare: worker {dead[0].name} died (exit code {dead[0].exitcode}) "
                                           "during a run") from None
            arm, seed, _ = todo[i]
            if err:
                raise RuntimeError(f"compare: run {arm.label}, seed {seed} failed:\n{err}")
            trained += ran
            print(f"compare: {done}/{n} runs done (last: {arm.label}, seed {seed})", flush=True)
        for w in workers:
            w.join(30)
        return trained
    finally:  # on an error or a signal: stop the other runs too
        for w in workers:
            if w.is_alive():
                w.terminate()
        for w in workers:
            w.join(30)
            if w.is_alive():
                w.kill()
                w.join()
        tasks.cancel_join_thread()


def run(cfg: Config, methods: list[str] | None = None, seeds: list[int] | None = None,
        out: str | Path = "docs/results", progress: bool = True,
        sweeps: list[tuple[str, str, list[Any]]] | None = None, jobs: int = 1) -> dict:
    from bridgerl.comparison import costs
    from bridgerl.stages import evaluate

    methods = methods or list(METHOD_NAMES)  # every method of the table (bridgerl.core.methods)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"--methods: unknown method(s) {bad} (known: {', '.join(METHOD_NAMES)})")
    seeds = list(seeds) if seeds else list(DEFAULT_SEEDS)
    out = Path(out)
    arms = make_arms(cfg, methods, sweeps or [])
    t0, load0 = time.perf_counter(), _load_avg()
    icfg = inputs_cfg(cfg, out)
    _ensure_inputs(icfg, out / "inputs")
    base_file = out / "inputs" / "base_eval.json"
    if not base_file.exists():  # what the base model solves when asked directly
        b = icfg.model_copy(deep=True)
        b.eval.out_dir, b.eval.metrics_file = str(out / "inputs" / "base_eval"), str(base_file)
        evaluate.run(b, model_dir=b.model.out_dir, progress=progress)
    base_acc = {k: v["accuracy"] for k, v in read_json(base_file)["benchmarks"].items()}
    base_chat = out / "inputs" / "base_chat.json"
    if not base_chat.exists():  # the base model's answers to the fixed chat prompts
        from bridgerl.comparison import chat

        write_json(base_chat, chat.answers(icfg.model.out_dir))
    tm = costs.token_means(icfg)
    todo = [(arm, seed, _run_cfg(icfg, arm, seed, out / "runs" / f"{arm.slug}-s{seed}"))
            for seed in seeds for arm in arms]  # seed-major: an interrupted comparison has whole seeds
    if jobs > 1 and icfg.threads is None:  # one process per share of the cores
        from bridgerl.core.threads import available_cores

        for _, _, rc in todo:
            rc.threads = max(1, available_cores() // jobs)
    trained = _run_all(todo, jobs, progress)
    results: dict = {}
    for arm, seed, rc in todo:
        r = results.setdefault(arm.label, {"method": arm.method, "overrides": arm.overrides, "seeds": [], "runs": []})
        r["seeds"].append(seed)
        r["runs"].append(_collect(rc, arm, tm))
    meta = {"seeds": seeds, "base_accuracy": base_acc, "base_chat": read_json(base_chat), "token_means": vars(tm),
            "wall_s": round(time.perf_counter() - t0),
            "load_avg_start": load0, "load_avg_end": _load_avg(), "cpus": os.cpu_count(),
            "preset": cfg.preset, "methods": methods, "sweeps": [list(x) for x in sweeps or []]}
    earlier = out / "results.json"
    if not trained and earlier.exists():  # nothing trained now: the time and load of the invocation that did
        before = read_json(earlier).get("meta", {})
        meta.update({k: before[k] for k in ("wall_s", "load_avg_start", "load_avg_end") if k in before})
    return finish(cfg, results, meta, out)


def rerender(cfg: Config, out: str | Path) -> dict:
    """Rewrite the report from an earlier run's results.json (no training)."""
    saved = read_json(Path(out) / "results.json")
    return finish(cfg, saved["arms"], saved["meta"], Path(out))


def finish(cfg: Config, results: dict, meta: dict, out: Path) -> dict:
    """Statistics, plots, report.md and results.json from the per-run results."""
    from bridgerl.comparison import plots, report, summary

    order = {m: i for i, m in enumerate(METHOD_NAMES)}
    results = dict(sorted(results.items(), key=lambda kv: (order.get(kv[1]["method"], 99), bool(kv[1]["overrides"]),
                                                            kv[0])))
    stats = summary.summarize(results, list(cfg.eval.benchmarks))
    out.mkdir(parents=True, exist_ok=True)
    plots.write_all(results, stats, out)
    report.write(cfg, results, stats, meta, out)
    write_json(out / "results.json", {"config_digest": cfg.digest(), "meta": meta, "arms": results,
                                      "statistics": stats})
    return {"arms": results, "statistics": stats}

