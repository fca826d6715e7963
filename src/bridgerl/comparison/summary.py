"""The numbers of a comparison report, from the per-run results of `bridgerl compare`:
accuracy per arm with 95% intervals, the paired comparisons and their verdicts, the cost each arm
needs to reach cold-start's final held-out accuracy on every cost axis, held-out and cooperative-gain
curves with interval bands. JSON-ready (no NaN: missing values are None)."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict

from bridgerl.comparison import costs, stats

TARGET_ARM = "cold_start"  # time-to-accuracy target: this arm's final held-out accuracy, seed by seed


def _num(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _iv(i: stats.Interval) -> dict:
    return {k: _num(v) for k, v in asdict(i).items()}


# the questions the report answers: BRIDGE against each of these, paired by seed (the issue's three, and
# alternating, the strongest baseline on the headroom task; bridge_single_level: the upper level's own worth)
KEY_COMPARISONS = [("bridge", "cold_start"), ("bridge", "bridge_frozen_w"), ("bridge", "mixed"),
                   ("bridge", "alternating"), ("bridge", "bridge_single_level")]


def _avg_acc(run: dict) -> float:
    return statistics.fmean(run["accuracy"].values())


def pairs_for(results: dict) -> list[tuple[str, str]]:
    """BRIDGE against the key baselines (KEY_COMPARISONS); each sweep arm against its method; and a key
    comparison between two sweep arms with the same overrides (e.g. BRIDGE and its single-level ablation, both
    at lr_w = 1e-4)."""
    out = [(a, b) for a, b in KEY_COMPARISONS if a in results and b in results]
    for label, r in results.items():
        if r["overrides"] and r["method"] in results:
            out.append((label, r["method"]))
    for label, r in results.items():  # a key comparison again where both methods ran with the same overrides
        for a, b in KEY_COMPARISONS:
            if r["overrides"] and r["method"] == a:
                out += [(label, other) for other, x in results.items()
                        if x["method"] == b and x["overrides"] == r["overrides"]]
    return out


def summarize(results: dict, benchmarks: list[str]) -> dict:
    per_seed = {label: [_avg_acc(run) for run in r["runs"]] for label, r in results.items()}
    arms = {}
    for label, r in results.items():
        runs = r["runs"]
        arms[label] = {
            "accuracy": {b: _iv(stats.mean_ci([run["accuracy"][b] for run in runs])) for b in benchmarks},
            "avg_accuracy": _iv(stats.mean_ci(per_seed[label])),
            "final_heldout": _iv(stats.mean_ci([run["curve"][-1]["heldout_accuracy"] for run in runs if run["curve"]])),
            "totals": {ax: _num(statistics.fmean(run["totals"].get(ax, math.nan) for run in runs))
                       for ax in costs.AXES},
            "state_memory_mb": statistics.fmean(run["state_memory_mb"] for run in runs),
            "curve": _curve_band(runs),
            "coop_gain": _coop_band(runs),
            # plain chat kept: KL(trained ‖ base) on the fixed chat prompts; the training KL at the last iteration
            "chat_kl": _iv(stats.mean_ci([run["chat"]["kl_to_base"] for run in runs if run.get("chat")])),
            "kl_end": _iv(stats.mean_ci([run.get("kl_end") for run in runs])),
        }
    comparisons = [c.to_dict() for c in stats.compare_all(per_seed, pairs_for(results))]
    for c in comparisons:
        c["diff"] = {k: _num(v) for k, v in c["diff"].items()}
        for k in ("p_t", "p_wilcoxon", "p_holm"):
            c[k] = _num(c[k])
    return {"arms": arms, "comparisons": comparisons, "time_to_target": _time_to_target(results),
            "per_seed_accuracy": per_seed}


def _curve_band(runs: list[dict]) -> dict:
    curves = [run["curve"] for run in runs if run["curve"]]
    n = min((len(c) for c in curves), default=0)
    out = {"step": [curves[0][i]["step"] for i in range(n)] if n else []}
    for ax in costs.AXES:
        out[ax] = [statistics.fmean(c[i][ax] for c in curves) for i in range(n)]
    band = stats.band([[p["heldout_accuracy"] for p in c] for c in curves])
    out["heldout"] = [_iv(b) for b in band]
    return out


def _coop_band(runs: list[dict]) -> dict | None:
    series = [run["coop_gain"] for run in runs if run.get("coop_gain")]
    if not series:
        return None
    n = min(len(s) for s in series)
    band = stats.band([[v for _, v in s[:n]] for s in series])
    thirds = {}
    for name, lo, hi in (("first third", 0, n // 3), ("middle third", n // 3, 2 * n // 3), ("last third", 2 * n // 3, n)):
        thirds[name] = _iv(stats.mean_ci([statistics.fmean(v for _, v in s[lo:hi]) for s in series])) if hi > lo else None
    return {"step": [st for st, _ in series[0][:n]], "band": [_iv(b) for b in band], "thirds": thirds}


def _time_to_target(results: dict) -> dict:
    """Per arm and cost axis: the cost at which each seed first reaches that seed's cold-start final
    held-out accuracy (None: not within the budget), and the median over the seeds that reached it."""
    if TARGET_ARM not in results:
        return {}
    target = {seed: run["curve"][-1]["heldout_accuracy"]
              for seed, run in zip(results[TARGET_ARM]["seeds"], results[TARGET_ARM]["runs"]) if run["curve"]}
    out = {}
    for label, r in results.items():
        row = {}
        for ax in costs.AXES:
            per = [costs.reach([(p[ax], p["heldout_accuracy"]) for p in run["curve"]], target[seed])
                   if seed in target else None for seed, run in zip(r["seeds"], r["runs"])]
            got = [x for x in per if x is not None]
            row[ax] = {"per_seed": per, "median": statistics.median(got) if got else None, "reached": len(got),
                       "n": len(per)}
        out[label] = row
    return {"target": f"{TARGET_ARM}'s final held-out accuracy, seed by seed", "arms": out}
