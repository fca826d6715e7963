"""`bridgerl report`: a results table like the paper's and a grouped bar chart, from eval metrics files.

Input per row (a model or method): the JSON `bridgerl evaluate` writes to eval.metrics_file,
`{"benchmarks": {name: {"accuracy", "n", "samples", ...}}, "avg_accuracy"}`. Output in out_dir:
report.md (rows = names, columns = benchmarks in first-seen order + Avg, as percentages, best per
column in bold), report.png (grouped bars, matplotlib Agg) and report.json (the same numbers).
"""

from __future__ import annotations

from pathlib import Path

from bridgerl.core.io import DataError, atomic_file, read_json, write_json

DISPLAY = {"math500": "MATH500", "minerva_math": "Minerva", "olympiadbench": "OlympiadBench",
           "aime24": "AIME24", "amc23": "AMC23", "gsm8k": "GSM8K", "synthetic": "Synthetic"}


def load_metrics(path: str | Path) -> dict:
    """An eval metrics file, checked for the fields the report needs."""
    m = read_json(path)
    if not isinstance(m, dict) or not isinstance(m.get("benchmarks"), dict):
        raise DataError(f"{path}: not an eval metrics file (no 'benchmarks' mapping)")
    for name, b in m["benchmarks"].items():
        if not isinstance(b, dict) or not isinstance(b.get("accuracy"), (int, float)):
            raise DataError(f"{path}: benchmarks.{name}: no numeric 'accuracy'")
    return m


def parse_named(items: list[str]) -> dict[str, Path]:
    """['bridge=metrics/a.json', ...] → {'bridge': Path(...)}; names must be unique."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise DataError(f"--metrics {item!r}: expected NAME=PATH")
        if name.strip() in out:
            raise DataError(f"--metrics {item!r}: name {name.strip()!r} given twice")
        out[name.strip()] = Path(path.strip())
    return out


def _columns(named_metrics: dict[str, dict]) -> list[str]:
    cols: list[str] = []
    for m in named_metrics.values():
        cols += [b for b in m["benchmarks"] if b not in cols]
    return cols


def _average(m: dict) -> float | None:
    if isinstance(m.get("avg_accuracy"), (int, float)):
        return float(m["avg_accuracy"])
    accs = [b["accuracy"] for b in m["benchmarks"].values()]
    return sum(accs) / len(accs) if accs else None


def _header(name: str, named_metrics: dict[str, dict]) -> str:
    ks = {m["benchmarks"][name].get("samples", 1) for m in named_metrics.values() if name in m["benchmarks"]}
    label = DISPLAY.get(name, name)
    return f"{label} (avg@{max(ks)})" if max(ks, default=1) > 1 else label


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v).replace("|", "\\|")


def table(named_metrics: dict[str, dict], extra_columns: dict[str, dict] | None = None) -> dict:
    """Rows of percentages: {"columns": [...], "rows": {name: {column: value|None}}}."""
    cols = _columns(named_metrics)
    extra_cols: list[str] = []
    for row in (extra_columns or {}).values():
        extra_cols += [c for c in row if c not in extra_cols]
    rows = {}
    for name, m in named_metrics.items():
        r = {c: (100.0 * m["benchmarks"][c]["accuracy"] if c in m["benchmarks"] else None) for c in cols}
        avg = _average(m)
        r["avg"] = None if avg is None else 100.0 * avg
        for c in extra_cols:
            r[c] = (extra_columns or {}).get(name, {}).get(c)
        rows[name] = r
    return {"benchmarks": cols, "extra_columns": extra_cols, "rows": rows}


def markdown(named_metrics: dict[str, dict], extra_columns: dict[str, dict] | None = None) -> str:
    t = table(named_metrics, extra_columns)
    acc_cols = t["benchmarks"] + ["avg"]
    best = {c: max((r[c] for r in t["rows"].values() if r[c] is not None), default=None) for c in acc_cols}
    heads = [_header(c, named_metrics) for c in t["benchmarks"]] + ["Avg."] + t["extra_columns"]
    lines = ["| Method | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for name, r in t["rows"].items():
        cells = []
        for c in acc_cols:
            v = r[c]
            cell = "–" if v is None else f"{v:.1f}"
            if v is not None and len(t["rows"]) > 1 and v == best[c]:
                cell = f"**{cell}**"
            cells.append(cell)
        cells += [_fmt(r[c]) for c in t["extra_columns"]]
        lines.append(f"| {_fmt(name)} | " + " | ".join(cells) + " |")
    ns = []
    for c in t["benchmarks"]:
        n = {m["benchmarks"][c].get("n") for m in named_metrics.values() if c in m["benchmarks"]}
        ns.append(f"{DISPLAY.get(c, c)} n={'/'.join(str(x) for x in sorted(n, key=str))}")
    lines += ["", "Accuracy in %; avg@k = mean over k samples per problem, else greedy pass@1. "
              "Avg. = mean over each row's benchmarks. Items: " + ", ".join(ns) + "."]
    return "\n".join(lines) + "\n"


def bar_chart(named_metrics: dict[str, dict], path: Path) -> None:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = table(named_metrics)
    cols = t["benchmarks"] + ["avg"]
    labels = [DISPLAY.get(c, c) for c in t["benchmarks"]] + ["Avg."]
    names = list(t["rows"])
    width = 0.8 / max(1, len(names))
    fig = Figure(figsize=(max(6.0, min(14.0, 1.0 + len(cols) * (0.6 + 0.25 * len(names)))), 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    x = np.arange(len(cols))
    for i, name in enumerate(names):
        vals = [t["rows"][name][c] for c in cols]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, [0 if v is None else v for v in vals], width, label=name)
    ax.set_xticks(x, labels)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, max(5.0, min(100.0, 1.15 * max((v or 0) for r in t["rows"].values() for v in
                                                  (r[c] for c in cols)))))
    ax.legend(fontsize="small", ncols=min(4, len(names)))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)


def write_report(named_metrics: dict[str, dict], out_dir: Path,
                 extra_columns: dict[str, dict] | None = None) -> dict[str, Path]:
    """Write out_dir/report.md, report.png and report.json; extra_columns: {row: {column: value}}."""
    if not named_metrics:
        raise DataError("report: no metrics given")
    for name, m in named_metrics.items():
        if not isinstance(m, dict) or not isinstance(m.get("benchmarks"), dict):
            raise DataError(f"report: metrics of {name!r} have no 'benchmarks' mapping")
    unknown = set(extra_columns or {}) - set(named_metrics)
    if unknown:
        raise DataError(f"report: extra_columns for unknown row(s): {', '.join(sorted(unknown))}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "report.md", "png": out_dir / "report.png", "json": out_dir / "report.json"}
    with atomic_file(paths["md"]) as f:
        f.write(markdown(named_metrics, extra_columns))
    bar_chart(named_metrics, paths["png"])
    write_json(paths["json"], table(named_metrics, extra_columns))
    return paths


def report_from_files(named_paths: dict[str, Path], out_dir: Path) -> dict[str, Path]:
    return write_report({name: load_metrics(p) for name, p in named_paths.items()}, out_dir)


