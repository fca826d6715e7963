"""The statistics of `bridgerl compare`: t-intervals, paired tests, Holm's correction and verdicts."""

from __future__ import annotations

import math

import pytest

from bridgerl.comparison import stats


def test_mean_ci_is_the_t_interval():
    iv = stats.mean_ci([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.3027
    assert iv.mean == 2.0 and iv.n == 3
    assert iv.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    one = stats.mean_ci([0.5])
    assert one.mean == 0.5 and math.isnan(one.lo)


def test_pairing_removes_what_seeds_share():
    # seeds differ a lot, but a is better than b by about 2 points on every seed
    b = [0.30, 0.50, 0.70, 0.40, 0.60]
    a = [x + d for x, d in zip(b, [0.021, 0.019, 0.020, 0.022, 0.018])]
    c = stats.paired("a", a, "b", b)
    assert c.diff.mean == pytest.approx(0.02) and c.diff.lo > 0 and c.p_t < 0.001
    assert (c.wins, c.losses) == (5, 0)
    assert c.p_wilcoxon == pytest.approx(0.0625)  # the smallest two-sided p with five seeds
    # unpaired, the same numbers could not be told apart
    assert stats.mean_ci(a).lo < stats.mean_ci(b).hi


def test_verdicts_and_holm():
    b = [0.5, 0.6, 0.55, 0.52, 0.58]
    better = [x + 0.05 + 0.004 * i for i, x in enumerate(b)]
    noisy = [x + (0.03 if i % 2 else -0.03) for i, x in enumerate(b)]
    worse = [x - 0.05 - 0.004 * i for i, x in enumerate(b)]
    res = stats.compare_all({"A": better, "B": b, "N": noisy, "W": worse}, [("A", "B"), ("N", "B"), ("W", "B"),
                                                                          ("A", "missing")])
    assert [(c.a, c.b) for c in res] == [("A", "B"), ("N", "B"), ("W", "B")]
    assert res[0].verdict.startswith("A beats B by +")
    assert res[1].verdict.startswith("no detectable difference between N and B")
    assert res[2].verdict.startswith("W is worse than B by -")
    assert all(c.p_holm >= c.p_t for c in res)
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    same = stats.paired("x", b, "y", list(b))
    assert same.p_t == 1.0 and "too few" not in stats.verdict(same)
    with pytest.raises(ValueError, match="3 vs 2 seeds"):
        stats.paired("x", [1, 2, 3], "y", [1, 2])


def test_band_is_pointwise():
    band = stats.band([[0.1, 0.2, 0.3], [0.3, 0.4], [0.2, 0.3, 0.9]])
    assert len(band) == 2 and band[0].mean == pytest.approx(0.2) and band[1].mean == pytest.approx(0.3)
