"""report.md of `bridgerl compare`: the verdicts first, then accuracy with 95% intervals, the paired
differences, the cost to reach cold-start's accuracy on each cost axis, the cooperative gain and the
figures. Everything it prints is in results.json."""

from __future__ import annotations

from pathlib import Path

from bridgerl.comparison.costs import AXES
from bridgerl.comparison.summary import KEY_COMPARISONS
from bridgerl.config import Config
from bridgerl.core.io import atomic_file
from bridgerl.core.methods import METHOD_NAMES


def _interval(iv: dict | None, fmt, floor: float | None = None) -> str:
    """An interval dict as "mean [lo, hi]" (the mean alone without bounds, — without a mean); `floor` clips lo."""
    if not iv or iv.get("mean") is None:
        return "—"
    if iv.get("lo") is None:
        return fmt(iv["mean"])
    lo = iv["lo"] if floor is None else max(iv["lo"], floor)
    return f"{fmt(iv['mean'])} [{fmt(lo)}, {fmt(iv['hi'])}]"


def _pct(iv: dict | None) -> str:
    return _interval(iv, lambda x: f"{100 * x:.1f}")


def _qty(x: float | None) -> str:
    if x is None:
        return "—"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def setting(cfg: Config, meta: dict) -> str:
    t, g, s = cfg.train, cfg.train.grpo, cfg.data.synthetic
    ops = f"{s.min_ops}" if s.min_ops == s.max_ops else f"{s.min_ops}–{s.max_ops}"
    ops += " operation" if ops == "1" else " operations"
    task = (f"embedded task: {ops} per problem, start ≤ {s.max_start}, operands ≤ {s.max_operand}; "
            if any(x.kind == "embedded" for x in cfg.data.rl_sources) else "")
    return (f"{task}{cfg.demos.max_problems or 'all'} demonstrations; {t.steps} iterations per method "
            f"(cold-start: {t.cold_start_sft_steps} SFT + {t.steps} RL), prompt batch {t.prompt_batch} × "
            f"{g.group_size} rollouts (≤ {g.max_new_tokens} new tokens), demo batch {t.demo_batch}, λ = {t.bridge.lam}, "
            f"LoRA r = {t.lora.r}, shadow steps {t.bridge.shadow_steps}; seeds {', '.join(map(str, meta['seeds']))}")


def preset_rationale(preset: str | None) -> str:
    """The comment block that opens a preset file (why the setting is what it is), as one paragraph."""
    if not preset:
        return ""
    from bridgerl.config import ConfigError, resolve_preset

    try:
        lines = resolve_preset(preset).read_text().splitlines()
    except (ConfigError, OSError):
        return ""
    text = []
    for line in lines:
        if not line.startswith("#"):
            break
        text.append(line.lstrip("#").strip())
    return " ".join(text[1:] if len(text) > 1 else text)


def render(cfg: Config, results: dict, stats: dict, meta: dict) -> str:
    benches = list(cfg.eval.benchmarks)
    arms = stats["arms"]
    n = len(meta["seeds"])
    preset = f" --preset {meta['preset']}" if meta.get("preset") else ""
    methods = meta.get("methods") or list(METHOD_NAMES)
    subset = f" --methods {','.join(methods)}" if list(methods) != list(METHOD_NAMES) else ""
    L = ["# Method comparison", "",
         f"Command: `bridgerl compare{preset}{subset} --seeds {','.join(map(str, meta['seeds']))}`"
         + "".join(f" `--sweep {m}:{k}={','.join(map(str, v))}`" for m, k, v in meta.get("sweeps", [])) + ".",
         f"Setting: {setting(cfg, meta)}.",
         "Every seed shares the data, base model and demonstrations across methods (paired by seed); accuracy "
         "is greedy pass@1 on the held-out test split, mean over seeds with its 95% t-interval in brackets. "
         f"The base model, asked directly: {', '.join(f'{b} {100 * a:.1f}%' for b, a in meta['base_accuracy'].items())}.",
         ""]
    why = preset_rationale(meta.get("preset"))
    if why:
        L += [f"Why this setting (preset `{meta['preset']}`): {why}", ""]
    L += ["## Verdict", ""]
    comps = stats["comparisons"]
    if comps:
        L += [f"- {c['verdict']}" for c in comps]
        L += ["", "Differences are in accuracy points, seed by seed (a − b); the verdict uses the paired t-test "
              "with Holm's correction over the comparisons above (α = 0.05). The Wilcoxon signed-rank test "
              f"needs no normality, but with {n} seeds its smallest possible p is {2 / 2 ** n:.3f}."]
    else:
        others = ", ".join(b for a, b in KEY_COMPARISONS if a == "bridge")
        L += [f"No paired comparison: the report needs bridge and at least one of {others} (or a sweep)."]
    curves = any(arms[label]["curve"]["step"] for label in results)  # held-out accuracy during training
    L += ["", "## Accuracy and cost per method", "",
          "| method | " + " | ".join(f"{b} (%)" for b in benches) + (" | final held-out (%)" if curves else "")
          + " | " + " | ".join(AXES.values()) + " | training-state memory (MB) |",
          "|---|" + "---|" * (len(benches) + curves + len(AXES) + 1)]
    for label in results:
        a = arms[label]
        L.append(f"| {label} | " + " | ".join(_pct(a["accuracy"][b]) for b in benches)
                 + (f" | {_pct(a['final_heldout'])}" if curves else "") + " | "
                 + " | ".join(_qty(a["totals"][ax]) for ax in AXES) + f" | {a['state_memory_mb']:.0f} |")
    L += ["", "Costs are per run, mean over seeds. Generated tokens: rollout tokens sampled; trained tokens: tokens "
          "through a forward+backward pass (BRIDGE's shadow pass counts); optimizer steps: parameter updates. "
          "How each is counted: `bridgerl.comparison.costs`."]
    tt = stats.get("time_to_target") or {}
    if not curves:
        L += ["", "Held-out accuracy was not measured during training (`train.eval_every = 0`: the budget went to "
              "seeds), so there are no held-out curves and no cost-to-reach table; each run's accuracy is its final "
              "evaluation above."]
    if tt and curves:
        L += ["", f"## Cost to reach {tt['target']}", "",
              "Median over the seeds that reach it (how many of them do, if not all); — : no seed within the budget.",
              "", "| method | " + " | ".join(AXES.values()) + " |", "|---|" + "---|" * len(AXES)]
        for label, row in tt["arms"].items():
            cells = []
            for ax in AXES:
                x = row[ax]
                cell = _qty(x["median"])
                if x["median"] is not None and x["reached"] < x["n"]:
                    cell += f" ({x['reached']}/{x['n']})"
                cells.append(cell)
            L.append(f"| {label} | " + " | ".join(cells) + " |")
    gains = {label: arms[label]["coop_gain"] for label in results if arms[label]["coop_gain"]}
    L += ["", "## Cooperative gain J_RL(θ,w) − J_RL(θ̂,w)", ""]
    if gains:
        L += ["Per iteration on the same rollouts (the RL objective of the policy with the adapter minus that of "
              "the RL-only shadow), averaged over each third of training; mean over seeds [95% interval]. "
              "Only methods with a shadow θ̂ have it (bridge and its sweeps); for the others it is not defined.", "",
              "| method | first third | middle third | last third |", "|---|---|---|---|"]
        for label, g in gains.items():
            cells = [(f"{iv['mean']:+.4f} [{iv['lo']:+.4f}, {iv['hi']:+.4f}]" if iv and iv["lo"] is not None
                      else (f"{iv['mean']:+.4f}" if iv else "—")) for iv in g["thirds"].values()]
            L.append(f"| {label} | " + " | ".join(cells) + " |")
        L += ["", "![cooperative gain](coop_gain.png)"]
    else:
        L += ["No arm with a shadow θ̂ ran, so the gain is not defined here."]
    L += chat_section(results, stats, meta)
    runs = [run["run"] for r in results.values() for run in r["runs"] if run.get("run")]
    backends = sorted({run["rollout_backend"] for r in results.values() for run in r["runs"] if run.get("rollout_backend")})
    if curves:
        L += ["", "## Curves", "", "![held-out accuracy vs iteration](heldout_vs_step.png)", "",
              "![held-out accuracy vs cost](heldout_vs_cost.png)"]
    L += ["", "## Machine", "",
          f"{meta.get('cpus')} CPUs; load average (1, 5, 15 min) {meta.get('load_avg_start')} at the start, "
          f"{meta.get('load_avg_end')} at the end of the last invocation that trained runs, "
          f"which took {meta.get('wall_s', 0) / 60:.1f} min (runs finished before it are reused). The {len(runs)} runs took "
          f"{sum(x['wall_s'] for x in runs) / 60:.1f} min of wall time and {sum(x['cpu_s'] for x in runs) / 60:.1f} "
          "min of CPU time in all (training and evaluation, finished child processes included; per run, with the load: "
          "runs/*/run.json)." + (f" Rollouts generated with {' and '.join(backends)} (train.rollout.backend)."
                                 if backends else ""), ""]
    return "\n".join(L)


def _sci(iv: dict | None) -> str:
    """A KL interval: two significant digits, lower bound clipped at 0 (a KL is never negative)."""
    return _interval(iv, lambda x: f"{x:.2g}", floor=0.0)


def _one_line(text: str, limit: int = 160) -> str:
    t = " ".join(text.split()).replace("|", "\\|")
    return t if len(t) <= limit else t[: limit - 1] + "…"


def chat_section(results: dict, stats: dict, meta: dict) -> list[str]:
    """Plain chat kept: KL to the base model on fixed chat prompts, answers unchanged, the first seed's answers."""
    from bridgerl.comparison.chat import MAX_NEW_TOKENS

    base = meta.get("base_chat")
    have = [label for label, r in results.items() if any(run.get("chat") for run in r["runs"])]
    if not base or not have:
        return []
    arms = stats["arms"]
    L = ["", "## Plain chat kept", "",
         f"{len(base['prompts'])} fixed chat prompts (`bridgerl.comparison.chat.PROMPTS`), asked through the chat "
         f"template, greedy, ≤ {MAX_NEW_TOKENS} tokens. *Chat KL to base*: KL(trained ‖ base) per answer token along "
         "the trained model's own answers, exact over the vocabulary (0: the base model's chat untouched); "
         "*answers as the base's*: answers identical to the base model's, over seeds × prompts; *training KL at the "
         "end*: the last iteration's k3 estimate to the method's reference model on its math rollouts. Mean over "
         "seeds [95% interval].", "",
         "| method | chat KL to base | answers as the base's | training KL at the end |", "|---|---|---|---|"]
    for label in have:
        same = total = 0
        for run in results[label]["runs"]:
            if run.get("chat"):
                same += sum(a == b for a, b in zip(run["chat"]["responses"], base["responses"]))
                total += len(base["responses"])
        L.append(f"| {label} | {_sci(arms[label]['chat_kl'])} | {same}/{total} | {_sci(arms[label]['kl_end'])} |")
    seed = results[have[0]]["seeds"][0]
    L += ["", f"Answers of seed {seed}:", ""]
    for i, prompt in enumerate(base["prompts"]):
        L += [f"*{prompt}*", "", "| model | answer |", "|---|---|", f"| base | {_one_line(base['responses'][i])} |"]
        for label in have:
            r = results[label]
            run = r["runs"][r["seeds"].index(seed)] if seed in r["seeds"] else None
            if run and run.get("chat"):
                L.append(f"| {label} | {_one_line(run['chat']['responses'][i])} |")
        L.append("")
    return L[:-1]


def write(cfg: Config, results: dict, stats: dict, meta: dict, out: Path) -> None:
    with atomic_file(out / "report.md") as f:
        f.write(render(cfg, results, stats, meta))
