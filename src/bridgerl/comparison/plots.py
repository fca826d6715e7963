"""The comparison's figures: held-out accuracy against iterations and against every cost axis (mean
over seeds with its 95% band), and BRIDGE's cooperative gain over training."""

from __future__ import annotations

from pathlib import Path

from bridgerl.comparison.costs import AXES
from bridgerl.core.methods import METHODS

# sweep arms: colors none of the methods uses (methods: bridgerl.core.methods), dashed
SWEEP_COLORS = ["#17becf", "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d"]


def _style(label: str, r: dict, sweep_index: dict | None = None) -> dict:
    spec = METHODS.get(r["method"])
    color = spec.color if spec else None
    if r["overrides"]:
        i = (sweep_index or {}).get(label, 0)
        color = SWEEP_COLORS[i % len(SWEEP_COLORS)]
    s = {"label": label, "color": color,
         "lw": 2.2 if r["method"] == "bridge" and not r["overrides"] else 1.3}
    if r["overrides"]:
        s["ls"] = "--"
    return s


def _band(ax, xs, band, style) -> None:
    ys = [100 * b["mean"] for b in band]
    line, = ax.plot(xs, ys, marker="o", ms=2.5, **style)
    lo = [100 * b["lo"] if b["lo"] is not None else 100 * b["mean"] for b in band]
    hi = [100 * b["hi"] if b["hi"] is not None else 100 * b["mean"] for b in band]
    ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12, lw=0)


def write_all(results: dict, stats: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_seeds = max(len(r["seeds"]) for r in results.values())
    sweep_index = {label: i for i, label in enumerate(k for k, r in results.items() if r["overrides"])}
    arms = stats["arms"]
    if any(arms[label]["curve"]["step"] for label in results):
        _heldout(results, arms, out, n_seeds, sweep_index, plt)
    else:  # held-out accuracy was not measured during training (train.eval_every = 0): no empty figures
        for name in ("heldout_vs_step.png", "heldout_vs_cost.png"):
            (out / name).unlink(missing_ok=True)
    _coop(results, arms, out, n_seeds, sweep_index, plt)


def _heldout(results: dict, arms: dict, out: Path, n_seeds: int, sweep_index: dict, plt) -> None:
    """Held-out accuracy against iterations and against each cost axis."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, r in results.items():
        c = arms[label]["curve"]
        if c["step"]:
            _band(ax, c["step"], c["heldout"], _style(label, r, sweep_index))
    ax.set_xlabel("iteration")
    ax.set_ylabel("held-out accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"held-out accuracy: mean and 95% band over {n_seeds} seeds")
    fig.tight_layout()
    fig.savefig(out / "heldout_vs_step.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (key, xlabel) in zip(axes.flat, AXES.items()):
        for label, r in results.items():
            c = arms[label]["curve"]
            if c["step"]:
                _band(ax, c[key], c["heldout"], _style(label, r, sweep_index))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy (%)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"held-out accuracy against cost: mean and 95% band over {n_seeds} seeds")
    fig.tight_layout()
    fig.savefig(out / "heldout_vs_cost.png", dpi=100)
    plt.close(fig)


def _coop(results: dict, arms: dict, out: Path, n_seeds: int, sweep_index: dict, plt) -> None:
    """BRIDGE's cooperative gain per iteration (arms with a shadow θ̂ only)."""
    gains = {label: arms[label]["coop_gain"] for label in results if arms[label]["coop_gain"]}
    if gains:
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for label, g in gains.items():
            style = _style(label, results[label], sweep_index)
            line, = ax.plot(g["step"], [b["mean"] for b in g["band"]], **style)
            lo = [b["lo"] if b["lo"] is not None else b["mean"] for b in g["band"]]
            hi = [b["hi"] if b["hi"] is not None else b["mean"] for b in g["band"]]
            ax.fill_between(g["step"], lo, hi, color=line.get_color(), alpha=0.12, lw=0)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("iteration")
        ax.set_ylabel("J_RL(θ,w) − J_RL(θ̂,w)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"cooperative gain per iteration: mean and 95% band over {n_seeds} seeds")
        fig.tight_layout()
        fig.savefig(out / "coop_gain.png", dpi=110)
        plt.close(fig)
