"""Statistics of a comparison over seeds: means with 95% t-intervals, paired differences with tests,
and a verdict in plain words. Pure functions of lists of numbers (one number per seed).

Pairing: seed s of every method shares the data, base model, demonstrations and training seed, so a
method's advantage is measured on the per-seed differences d_s = a_s − b_s (which removes what the
seeds have in common). Tests: the paired t-test (the interval's test) and the Wilcoxon signed-rank
test (no normality assumed; with n seeds its smallest two-sided p is 2 / 2^n, 0.0625 for n = 5). The
verdict uses the paired t-test with Holm's correction over the comparisons of one report.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

from scipy import stats as _st

LEVEL = 0.95
ALPHA = 1 - LEVEL


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def mean_ci(xs: list[float], level: float = LEVEL) -> Interval:
    """Mean and its two-sided t-interval (nan bounds with fewer than two values)."""
    xs = [float(x) for x in xs if x is not None and not math.isnan(x)]
    n = len(xs)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    m = statistics.fmean(xs)
    if n < 2:
        return Interval(m, math.nan, math.nan, n)
    half = _st.t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(xs) / math.sqrt(n)
    return Interval(m, m - half, m + half, n)


@dataclass(frozen=True)
class Paired:
    a: str
    b: str
    diff: Interval  # of a − b, per seed
    p_t: float  # paired t-test, two-sided
    p_wilcoxon: float  # Wilcoxon signed-rank, two-sided
    wins: int  # seeds where a > b
    losses: int  # seeds where a < b
    p_holm: float = math.nan  # p_t adjusted over the report's comparisons (holm)
    verdict: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["diff"] = asdict(self.diff)
        return d


def paired(a_name: str, a: list[float], b_name: str, b: list[float]) -> Paired:
    """a − b seed by seed (the lists are in the same seed order)."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison {a_name} vs {b_name}: {len(a)} vs {len(b)} seeds")
    d = [x - y for x, y in zip(a, b)]
    ci = mean_ci(d)
    if len(d) < 2:
        p_t = p_w = math.nan
    elif all(abs(x) < 1e-12 for x in d):
        p_t = p_w = 1.0
    else:
        p_t = float(_st.ttest_rel(a, b).pvalue) if statistics.stdev(d) > 0 else 0.0
        p_w = float(_st.wilcoxon(d, zero_method="zsplit").pvalue)
    return Paired(a_name, b_name, ci, p_t, p_w, sum(x > 0 for x in d), sum(x < 0 for x in d))


def holm(ps: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (nan stays nan)."""
    idx = sorted((i for i, p in enumerate(ps) if not math.isnan(p)), key=lambda i: ps[i])
    out = [math.nan] * len(ps)
    running, m = 0.0, len(idx)
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


def verdict(c: Paired, unit: str = "points", scale: float = 100.0, alpha: float = ALPHA) -> str:
    """One sentence: better, worse, or no detectable difference, with the interval."""
    d = c.diff
    p = c.p_holm if not math.isnan(c.p_holm) else c.p_t
    if d.n < 2 or math.isnan(p):
        return f"{c.a} vs {c.b}: too few seeds to tell ({d.n})"
    holm_s = f", Holm {_p(c.p_holm)}" if not math.isnan(c.p_holm) else ""
    span = f"{scale * d.mean:+.1f} {unit} (95% CI {scale * d.lo:+.1f} to {scale * d.hi:+.1f}; " \
           f"{c.wins}/{d.n} seeds better, {c.losses} worse; paired t p {_p(c.p_t, '= ')}{holm_s}; " \
           f"Wilcoxon p {_p(c.p_wilcoxon, '= ')})"
    if p < alpha and d.mean > 0:
        return f"{c.a} beats {c.b} by {span}."
    if p < alpha and d.mean < 0:
        return f"{c.a} is worse than {c.b} by {span}."
    return f"no detectable difference between {c.a} and {c.b}: {span}."


def compare_all(per_seed: dict[str, list[float]], pairs: list[tuple[str, str]]) -> list[Paired]:
    """Paired comparisons for `pairs` (names present in per_seed), Holm-corrected together, with verdicts."""
    out = [paired(a, per_seed[a], b, per_seed[b]) for a, b in pairs if a in per_seed and b in per_seed]
    for c, ph in zip(out, holm([c.p_t for c in out])):
        object.__setattr__(c, "p_holm", ph)
        object.__setattr__(c, "verdict", verdict(c))
    return out


def band(curves: list[list[float]], level: float = LEVEL) -> list[Interval]:
    """Pointwise mean and t-interval of equally long curves (one per seed)."""
    n = min((len(c) for c in curves), default=0)
    return [mean_ci([c[i] for c in curves], level) for i in range(n)]


def _p(p: float, eq: str = "") -> str:
    """A p-value as the report prints it: three decimals, or < 0.001."""
    return "< 0.001" if p < 0.001 else f"{eq}{p:.3f}"
