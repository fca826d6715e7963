"""The training curve (train.plots_file, a CSV with one row per step) as a self-contained HTML page.

One inline-SVG chart per column (reward, held-out accuracy, SFT loss, ...) against `step`, no
JavaScript and no external files, so the Kubeflow UI can show it as the train task's HTML artifact.
"""

from __future__ import annotations

import csv
import html
import math
from pathlib import Path

from bridgerl.core.io import atomic_file

W, H, PAD = 420, 180, 36


def _series(rows: list[dict], col: str) -> list[tuple[float, float]]:
    out = []
    for r in rows:
        try:
            x, y = float(r["step"]), float(r[col])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            out.append((x, y))
    return out


def _chart(col: str, pts: list[tuple[float, float]]) -> str:
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def sx(x):
        return PAD + (x - x0) / (x1 - x0) * (W - 2 * PAD)

    def sy(y):
        return H - PAD + (y - y0) / (y1 - y0) * (2 * PAD - H)

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2"/>' for x, y in pts)
    return (f'<figure><figcaption>{html.escape(col)} (last {ys[-1]:.4g})</figcaption>'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" '
            f'aria-label="{html.escape(col)} by step">'
            f'<rect x="{PAD}" y="{PAD}" width="{W - 2 * PAD}" height="{H - 2 * PAD}" fill="none" stroke="#ccc"/>'
            f'<text x="2" y="{PAD}" font-size="10">{y1:.3g}</text>'
            f'<text x="2" y="{H - PAD}" font-size="10">{y0:.3g}</text>'
            f'<text x="{PAD}" y="{H - 8}" font-size="10">step {x0:g}</text>'
            f'<text x="{W - PAD - 40}" y="{H - 8}" font-size="10">{x1:g}</text>'
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{line}"/>'
            f'<g fill="#1f77b4">{dots}</g></svg></figure>')


def render(csv_path: str | Path, html_path: str | Path, title: str = "Training curve") -> int:
    """Write the page; returns the number of charts (columns with at least one numeric value)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in (rows[0].keys() if rows else []) if c != "step"]
    charts = [_chart(c, pts) for c in cols if (pts := _series(rows, c))]
    body = "".join(charts) or "<p>No numeric columns.</p>"
    with atomic_file(html_path) as f:
        f.write(f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                "<style>body{font-family:sans-serif}figure{display:inline-block;margin:8px}</style></head>"
                f"<body><h1>{html.escape(title)}</h1><p>{len(rows)} steps</p>{body}</body></html>\n")
    return len(charts)
