"""The filters of `build-demos`, each counting what it keeps and drops.

Problem level (before any teacher request is spent): drop duplicates (same normalized text) and
problems contaminated by an evaluation benchmark (a shared word n-gram; data_sources listed in
`demos.decontaminate_exempt` are templated, so only an exact match counts for them).
Trace level: drop traces whose final answer does not verify, then traces over `max_tokens`.
Problem level again: problems left with no trace are dropped; one trace is selected for the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def normalize(text: str) -> str:
    return " ".join(words(text))


class Decontaminator:
    """Finds the benchmark a problem overlaps with: a shared word n-gram, or containing a whole
    benchmark problem shorter than n words."""

    def __init__(self, benchmarks: dict[str, list[str]], n: int | None, exempt: list[str] | tuple = ()):
        self.n, self.exempt = n, set(exempt)
        self.exact: dict[str, str] = {}
        self.grams: dict[tuple[str, ...], str] = {}
        self.short: list[tuple[str, str]] = []  # (" w1 w2 ", benchmark) for problems shorter than n
        for name, texts in benchmarks.items():
            for t in texts:
                ws = words(t)
                if not ws:
                    continue
                self.exact.setdefault(" ".join(ws), name)
                if n is None:
                    continue
                if len(ws) < n:
                    self.short.append((f" {' '.join(ws)} ", name))
                for i in range(len(ws) - n + 1):
                    self.grams.setdefault(tuple(ws[i: i + n]), name)

    def hit(self, problem: str, data_source: str = "") -> str | None:
        ws = words(problem)
        joined = " ".join(ws)
        if joined in self.exact:
            return self.exact[joined]
        if self.n is None or data_source in self.exempt:
            return None
        for i in range(len(ws) - self.n + 1):
            name = self.grams.get(tuple(ws[i: i + self.n]))
            if name is not None:
                return name
        padded = f" {joined} "
        for text, name in self.short:
            if text in padded:
                return name
        return None


@dataclass
class ProblemFilter:
    kept: list[dict] = field(default_factory=list)
    dropped_duplicate: list[str] = field(default_factory=list)
    dropped_contaminated: dict[str, list[str]] = field(default_factory=dict)  # benchmark → ids


def filter_problems(problems: list[dict], decon: Decontaminator | None) -> ProblemFilter:
    out, seen = ProblemFilter(), set()
    for row in problems:
        key = normalize(row["problem"])
        if key in seen:
            out.dropped_duplicate.append(row["id"])
            continue
        seen.add(key)
        bench = decon.hit(row["problem"], row.get("data_source", "")) if decon else None
        if bench is not None:
            out.dropped_contaminated.setdefault(bench, []).append(row["id"])
            continue
        out.kept.append(row)
    return out


@dataclass
class TraceFilter:
    demos: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    lengths_all: list[int] = field(default_factory=list)
    lengths_kept: list[int] = field(default_factory=list)
    solved: int = 0  # problems with at least one verified trace (any length)


def filter_traces(problems: list[dict], samples: dict[str, list[dict]], *, length: Callable[[dict], int],
                  max_tokens: int, select: str,
                  judge: Callable[[list[dict], list[str]], list[bool]]) -> TraceFilter:
    """`samples[id]`: records {sample, response, tokens, …} in sample order. One demo per problem. `judge(rows,
    outputs)`: each output's correctness (`bridgerl.rewards.terms.Scorer.judge_many`: the correctness terms)."""
    out = TraceFilter()
    c = dict.fromkeys(("samples", "dropped_wrong_answer", "correct", "dropped_too_long", "eligible",
                       "problems_without_trace", "kept"), 0)
    flat = [(row, s) for row in problems for s in samples.get(row["id"], [])]
    # one call for all traces: a user term runs it in its worker pool
    verdicts = iter(judge([row for row, _ in flat], [s["response"] for _, s in flat]))
    for row in problems:
        eligible = []
        solved = False
        for s in samples.get(row["id"], []):
            ok = next(verdicts)
            c["samples"] += 1
            n = length(s)
            out.lengths_all.append(n)
            if not ok:
                c["dropped_wrong_answer"] += 1
                continue
            c["correct"] += 1
            solved = True
            if n > max_tokens:
                c["dropped_too_long"] += 1
                continue
            c["eligible"] += 1
            eligible.append((n, int(s.get("sample", 0)), s))
        out.solved += solved
        if not eligible:
            c["problems_without_trace"] += 1
            continue
        n, _, best = min(eligible, key=lambda t: (t[0], t[1])) if select == "shortest" else \
            min(eligible, key=lambda t: t[1])
        out.lengths_kept.append(n)
        out.demos.append({"id": row["id"], "problem": row["problem"], "answer": row["answer"],
                          "response": best["response"], "data_source": row["data_source"]})
        c["kept"] += 1
    out.counts = c
    return out


def length_stats(xs: list[int]) -> dict:
    if not xs:
        return {"n": 0}
    a = np.asarray(xs, dtype=float)
    return {"n": len(xs), "mean": round(float(a.mean()), 2), "median": float(np.median(a)),
            "p90": float(np.percentile(a, 90)), "min": int(a.min()), "max": int(a.max())}
