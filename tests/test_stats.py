"""Tests for mllm_study.stats: each function vs scipy or a hand-computed closed form."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as ss

from mllm_study import stats as st
from mllm_study.stats import Interval, TestResult

RNG = np.random.default_rng(12345)
X20 = RNG.normal(0.5, 0.1, 20)          # e.g. 20 per-item scores
A15 = RNG.normal(0.60, 0.05, 15)        # paired scores of method A
B15 = A15 - RNG.normal(0.02, 0.03, 15)  # method B on the same 15 items


# ----------------------------------------------------------------------------- t_ci
def test_t_ci_hand_example():
    # x = 1..5: mean 3, Σ(x-3)^2 = 10, s^2 = 10/4 = 2.5, se = sqrt(2.5/5) = 0.7071068,
    # t_{0.975,4} = 2.7764451, half-width = 2.7764451 * 0.7071068 = 1.9632432.
    iv = st.t_ci([1, 2, 3, 4, 5])
    assert ss.t.ppf(0.975, 4) == pytest.approx(2.7764451, abs=1e-7)
    assert (iv.estimate, iv.n, iv.method) == (3.0, 5, "t")
    assert iv.low == pytest.approx(3 - 1.9632432, abs=1e-6)
    assert iv.high == pytest.approx(3 + 1.9632432, abs=1e-6)
    assert iv.half_width == pytest.approx(1.9632432, abs=1e-6)


def test_t_ci_matches_scipy_interval_and_confidence_level():
    iv = st.t_ci(X20, confidence=0.9)
    lo, hi = ss.t.interval(0.9, 19, loc=X20.mean(), scale=ss.sem(X20))
    assert (iv.low, iv.high) == pytest.approx((lo, hi), rel=1e-12)


def test_t_ci_edge_cases():
    one = st.t_ci([0.7])  # n = 1: spread unknown -> infinite interval, no crash
    assert one.estimate == 0.7 and one.low == -math.inf and one.high == math.inf and one.n == 1
    const = st.t_ci([0.5, 0.5, 0.5])  # zero variance -> zero width
    assert const.low == const.high == 0.5


@pytest.mark.parametrize("bad, match", [
    ([], "at least 1"), ([1.0, np.nan], "NaN"), ([1.0, np.inf], "infinite"),
    ([[1.0, 2.0]], "1-D"), (["a", "b"], "numeric"),
])
def test_t_ci_input_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        st.t_ci(bad)


@pytest.mark.parametrize("conf", [0.0, 1.0, 95])
def test_confidence_validation(conf):
    with pytest.raises(ValueError, match="confidence must be in"):
        st.t_ci([1, 2, 3], confidence=conf)


# ----------------------------------------------------------------------------- formatting
def test_format_and_str():
    iv = Interval(0.5123, 0.48, 0.5444, "t", 5)
    assert str(iv) == "0.512 [0.480, 0.544]"
    assert st.format_mean_ci(iv, digits=1) == "0.5 [0.5, 0.5]"
    assert st.format_mean_ci(st.t_ci([2.0])) == "2.000 [-inf, inf]"
    res = st.paired_t_test([1, 2, 3], [0, 0, 2])
    assert str(res).startswith("paired t-test: statistic=")


# ----------------------------------------------------------------------------- bootstrap
@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_bootstrap_matches_scipy_same_resamples(method):
    # Same generator + same index draw (rng.integers(0, n, (B, n))) -> identical resamples,
    # so the intervals agree to rounding (BCa jackknife is summed in a different order).
    iv = st.bootstrap_ci(X20, n_resamples=2000, seed=7, method=method)
    ref = ss.bootstrap((X20,), np.mean, n_resamples=2000, method=method,
                       rng=np.random.default_rng(7)).confidence_interval
    assert iv.estimate == pytest.approx(X20.mean())
    assert (iv.low, iv.high) == pytest.approx((ref.low, ref.high), rel=1e-10)
    assert iv.method == f"bootstrap-{method}" and iv.n == 20


def test_bootstrap_non_vectorised_statistic_matches_scipy():
    def med(v):  # no `axis` argument -> row-by-row fallback
        return float(np.median(v))

    iv = st.bootstrap_ci(X20, statistic=med, n_resamples=500, seed=3, method="bca")
    ref = ss.bootstrap((X20,), med, vectorized=False, n_resamples=500, method="bca",
                       rng=np.random.default_rng(3)).confidence_interval
    assert (iv.low, iv.high) == pytest.approx((ref.low, ref.high), rel=1e-10)


def test_bootstrap_different_seeds_agree_within_monte_carlo_error():
    # Different seeds -> different resamples; bounds should differ by a small fraction of the SE.
    se = X20.std(ddof=1) / math.sqrt(20)
    for method in ("percentile", "bca"):
        iv = st.bootstrap_ci(X20, n_resamples=4000, seed=1, method=method)
        ref = ss.bootstrap((X20,), np.mean, n_resamples=4000, method=method,
                           rng=np.random.default_rng(99)).confidence_interval
        assert abs(iv.low - ref.low) < 0.25 * se and abs(iv.high - ref.high) < 0.25 * se
    # ...and a percentile bootstrap CI of the mean is close to the t interval here.
    t = st.t_ci(X20)
    assert abs(iv.low - t.low) < 0.5 * se and abs(iv.high - t.high) < 0.5 * se


def test_bootstrap_reproducible_and_validated():
    assert st.bootstrap_ci(X20, seed=5) == st.bootstrap_ci(X20, seed=5)
    const = st.bootstrap_ci([1.0, 1.0, 1.0])
    assert const.low == const.high == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        st.bootstrap_ci([1.0])
    with pytest.raises(ValueError, match="method must be"):
        st.bootstrap_ci(X20, method="basic")
    with pytest.raises(ValueError, match="n_resamples"):
        st.bootstrap_ci(X20, n_resamples=0)


def test_paired_bootstrap_ci():
    iv = st.paired_bootstrap_ci(A15, B15, n_resamples=2000, seed=0)
    d = A15 - B15
    # Resampling pairs == resampling differences: identical to scipy on d with the same seed.
    ref = ss.bootstrap((d,), np.mean, n_resamples=2000, method="percentile",
                       rng=np.random.default_rng(0)).confidence_interval
    assert iv.estimate == pytest.approx(d.mean())
    assert (iv.low, iv.high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert iv.method == "paired-bootstrap-percentile" and iv.n == 15
    # scipy's paired=True bootstrap of mean(a) - mean(b) resamples the same item indices.
    ref2 = ss.bootstrap((A15, B15), lambda a, b, axis: a.mean(axis) - b.mean(axis), paired=True,
                        n_resamples=2000, method="percentile",
                        rng=np.random.default_rng(0)).confidence_interval
    assert (iv.low, iv.high) == pytest.approx((ref2.low, ref2.high), rel=1e-10)
    with pytest.raises(ValueError, match="same length"):
        st.paired_bootstrap_ci([1, 2, 3], [1, 2])


# ----------------------------------------------------------------------------- paired t
def test_paired_t_test_matches_scipy_and_dz():
    res = st.paired_t_test(A15, B15)
    ref = ss.ttest_rel(A15, B15)
    d = A15 - B15
    assert isinstance(res, TestResult) and res.n == 15 and res.extra["df"] == 14
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert res.effect_size_name == "cohen_dz"
    assert res.effect_size == pytest.approx(d.mean() / d.std(ddof=1))
    assert res.effect_size == pytest.approx(res.statistic / math.sqrt(15))  # t = d_z * sqrt(n)


def test_paired_t_hand_example():
    # d = [1, 2, 3]: mean 2, sd 1, t = 2 / (1/sqrt 3) = 3.4641, d_z = 2.
    res = st.paired_t_test([2, 4, 6], [1, 2, 3])
    assert res.statistic == pytest.approx(2 * math.sqrt(3))
    assert res.effect_size == pytest.approx(2.0)
    assert res.p_value == pytest.approx(2 * ss.t.sf(2 * math.sqrt(3), 2))


def test_paired_t_degenerate_differences():
    zero = st.paired_t_test([1, 2, 3], [1, 2, 3])
    assert (zero.statistic, zero.p_value, zero.effect_size) == (0.0, 1.0, 0.0)
    const = st.paired_t_test([2, 3, 4], [1, 2, 3])  # d = 1 everywhere: infinite t, like scipy
    assert const.statistic == math.inf and const.p_value == 0.0 and const.effect_size == math.inf


@pytest.mark.parametrize("fn", [st.paired_t_test, st.wilcoxon_test, st.permutation_test])
def test_paired_input_validation(fn):
    with pytest.raises(ValueError, match="same length; got 3 and 2"):
        fn([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        fn([1.0], [0.0])
    with pytest.raises(ValueError, match="NaN"):
        fn([1.0, np.nan, 2.0], [0.0, 1.0, 2.0])


# ----------------------------------------------------------------------------- wilcoxon
def test_wilcoxon_hand_example_rank_biserial():
    # d = [1, -2, 0, 3, 4]; the zero is dropped; ranks of |d| = 1, 2, 3, 4.
    # W+ = 1 + 3 + 4 = 8, W- = 2, r = (8 - 2) / (8 + 2) = 0.6; scipy statistic = min = 2.
    a, b = [1, -2, 0, 3, 4], [0, 0, 0, 0, 0]
    res = st.wilcoxon_test(a, b)
    ref = ss.wilcoxon(a, b)
    assert res.effect_size == pytest.approx(0.6) and res.effect_size_name == "rank_biserial"
    assert (res.extra["w_plus"], res.extra["w_minus"], res.extra["n_nonzero"]) == (8, 2, 4)
    assert res.statistic == ref.statistic == 2
    assert res.p_value == pytest.approx(ref.pvalue) and res.n == 5


def test_wilcoxon_matches_scipy_and_ties():
    res, ref = st.wilcoxon_test(A15, B15), ss.wilcoxon(A15, B15)
    assert res.statistic == ref.statistic and res.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    # Tied |d| get average ranks: d = [1, -1, 2, 2] -> ranks 1.5, 1.5, 3.5, 3.5,
    # W+ = 1.5 + 3.5 + 3.5 = 8.5, W- = 1.5, r = 7 / 10 = 0.7.
    tie = st.wilcoxon_test([1, -1, 2, 2], [0, 0, 0, 0])
    assert tie.effect_size == pytest.approx(0.7)
    assert tie.p_value == pytest.approx(ss.wilcoxon([1, -1, 2, 2]).pvalue)
    neg = st.wilcoxon_test([0, 0, 0], [1, 2, 3])  # all a < b -> r = -1
    assert neg.effect_size == -1.0


def test_wilcoxon_all_zero_differences():
    res = st.wilcoxon_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert (res.statistic, res.p_value, res.effect_size) == (0.0, 1.0, 0.0)


# ----------------------------------------------------------------------------- permutation
def test_permutation_exact_hand_enumeration():
    # d = [1, -2, 4], observed sum 3 (mean 1). All 8 sign flips give sums
    #  7, -1, 3, -5, 5, -3, 1, -7  ->  |sum| >= 3 for 7, 3, -5, 5, -3, -7: 6 of 8, p = 0.75.
    res = st.permutation_test([1, -2, 4], [0, 0, 0])
    sums = [sum(s * v for s, v in zip(sg, [1, -2, 4])) for sg in itertools.product([1, -1], repeat=3)]
    assert sorted(sums) == [-7, -5, -3, -1, 1, 3, 5, 7]
    assert res.p_value == pytest.approx(0.75)
    assert res.statistic == pytest.approx(1.0)
    assert res.extra == {"method": "exact", "n_permutations": 8}
    # d = [1, 2, 3]: sums ±6, ±4, ±2, 0, 0 -> only ±6 reach |6|: p = 2/8 = 0.25.
    assert st.permutation_test([2, 4, 6], [1, 2, 3]).p_value == pytest.approx(0.25)


def test_permutation_exact_matches_scipy():
    a, b = A15[:10], B15[:10]
    res = st.permutation_test(a, b)
    ref = ss.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis),
                              permutation_type="samples", n_resamples=np.inf)
    assert res.extra["n_permutations"] == 2**10
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    d = a - b
    assert res.effect_size == pytest.approx(d.mean() / d.std(ddof=1))


def test_permutation_monte_carlo():
    rng = np.random.default_rng(1)
    d = rng.normal(0.1, 1.0, 14)
    exact = np.mean([abs(np.dot(s, d)) >= abs(d.sum()) * (1 - 1e-14)
                     for s in itertools.product([1.0, -1.0], repeat=14)])  # 16384 patterns
    res = st.permutation_test(d, np.zeros(14), n_resamples=20000, seed=0)
    assert res.extra["method"] == "monte_carlo"
    assert abs(res.p_value - exact) < 0.02  # MC sd <= sqrt(0.25 / 20000) = 0.0035
    assert st.permutation_test(d, np.zeros(14), seed=3) == st.permutation_test(d, np.zeros(14), seed=3)
    # +1 correction: 20 positive differences, exact p = 2 / 2^20 -> no resample reaches it,
    # so p = (0 + 1) / (B + 1), never 0.
    big = st.permutation_test(np.arange(1, 21, dtype=float), np.zeros(20), n_resamples=999)
    assert big.p_value == pytest.approx(1 / 1000)


def test_permutation_all_zero_differences():
    small = st.permutation_test([1, 2, 3], [1, 2, 3])
    large = st.permutation_test(np.ones(30), np.ones(30), n_resamples=200)
    for res in (small, large):
        assert res.p_value == 1.0 and res.effect_size == 0.0 and res.statistic == 0.0


# ----------------------------------------------------------------------------- holm
def test_holm_textbook_example():
    # sorted p: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max so far 0.06.
    adj = st.holm_correction([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_array_equal(st.reject(adj, alpha=0.05), [True, False, False, True])


def test_holm_cap_monotone_and_edges():
    np.testing.assert_allclose(st.holm_correction([0.5, 0.6]), [1.0, 1.0])  # 0.5*2 = 1.0, capped
    p = RNG.uniform(0, 0.2, 25)
    adj = st.holm_correction(p)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0) and np.all(adj >= p) and np.all(adj <= 1)
    assert st.holm_correction([]).size == 0
    assert st.holm_correction([0.2])[0] == 0.2
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        st.holm_correction([0.1, 1.2])
    with pytest.raises(ValueError, match="NaN"):
        st.holm_correction([0.1, np.nan])
    with pytest.raises(ValueError, match="alpha"):
        st.reject([0.1], alpha=0)


# ----------------------------------------------------------------------------- friedman
FRIEDMAN = pd.DataFrame({"A": [0.90, 0.85, 0.70, 0.95],
                         "B": [0.80, 0.90, 0.70, 0.60],
                         "C": [0.70, 0.60, 0.50, 0.80]})


def test_friedman_hand_example_and_scipy():
    # Ranks per block (higher is better, 1 = best):  A      B      C
    #   block 1 (.90 .80 .70)                         1      2      3
    #   block 2 (.85 .90 .60)                         2      1      3
    #   block 3 (.70 .70 .50)                         1.5    1.5    3
    #   block 4 (.95 .60 .80)                         1      3      2
    # rank sums 5.5, 7.5, 11 -> averages 1.375, 1.875, 2.75.
    # chi2 = [12/(4*3*4) * (5.5^2 + 7.5^2 + 11^2) - 3*4*4] / C = (0.25*207.5 - 48) / C
    #      = 3.875 / C, C = 1 - (2^3 - 2)/(4*3*(9-1)) = 1 - 6/96 = 0.9375 -> chi2 = 4.13333.
    # Kendall's W = chi2 / (n (k-1)) = 4.13333 / 8 = 0.516667.
    res = st.friedman_test(FRIEDMAN)
    ref = ss.friedmanchisquare(FRIEDMAN.A, FRIEDMAN.B, FRIEDMAN.C)
    assert res.extra["average_ranks"] == pytest.approx({"A": 1.375, "B": 1.875, "C": 2.75})
    assert res.statistic == pytest.approx(4.133333, abs=1e-6)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert res.effect_size == pytest.approx(0.516667, abs=1e-6) and res.effect_size_name == "kendall_w"
    assert res.effect_size == pytest.approx(res.statistic / (4 * 2))
    assert (res.n, res.extra["k"], res.extra["df"]) == (4, 3, 2)


def test_friedman_lower_is_better_and_array_input():
    res = st.friedman_test(FRIEDMAN.to_numpy(), higher_is_better=False)
    # ranks reverse: k + 1 - r -> 2.625, 2.125, 1.25; chi2 unchanged.
    assert res.extra["average_ranks"] == pytest.approx({"0": 2.625, "1": 2.125, "2": 1.25})
    assert res.statistic == pytest.approx(st.friedman_test(FRIEDMAN).statistic)
    # perfect agreement across blocks -> W = 1
    perfect = st.friedman_test([[3, 2, 1], [30, 20, 10], [0.3, 0.2, 0.1]])
    assert perfect.effect_size == pytest.approx(1.0)


def test_friedman_edges_and_validation():
    tied = st.friedman_test(np.ones((4, 3)))
    assert (tied.statistic, tied.p_value, tied.effect_size) == (0.0, 1.0, 0.0)
    assert tied.extra["average_ranks"] == {"0": 2.0, "1": 2.0, "2": 2.0}
    with pytest.raises(ValueError, match=r">= 3 treatments \(columns\), got 4 x 2"):
        st.friedman_test(np.ones((4, 2)))
    with pytest.raises(ValueError, match=r">= 2 blocks \(rows\).*got 1 x 3"):
        st.friedman_test(np.ones((1, 3)))
    with pytest.raises(ValueError, match="2-D"):
        st.friedman_test([1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        st.friedman_test([[1, 2, np.nan], [1, 2, 3]])


# ----------------------------------------------------------------------------- variance test
@pytest.mark.parametrize("center, name", [("median", "brown-forsythe"), ("mean", "levene")])
def test_variance_test_matches_scipy(center, name):
    g1, g2, g3 = RNG.normal(0, 1, 8), RNG.normal(0, 3, 10), RNG.normal(1, 1, 6)
    res = st.variance_test(g1, g2, g3, center=center)
    ref = ss.levene(g1, g2, g3, center=center)
    assert res.name == name and res.n == 24 and res.extra["df"] == (2, 21)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    v = [np.var(g, ddof=1) for g in (g1, g2, g3)]
    assert res.effect_size == pytest.approx(max(v) / min(v))


def test_variance_test_hand_ratio_and_edges():
    # var([1,2,3]) = 1, var([2,4,6]) = 4 -> ratio 4.
    res = st.variance_test([1, 2, 3], [2, 4, 6])
    assert res.effect_size == pytest.approx(4.0) and res.effect_size_name == "variance_ratio"
    const = st.variance_test([1, 1, 1], [2, 2, 2])
    assert (const.statistic, const.p_value, const.effect_size) == (0.0, 1.0, 1.0)
    assert st.variance_test([1, 1, 1], [1, 2, 3]).effect_size == math.inf
    with pytest.raises(ValueError, match="at least 2 groups"):
        st.variance_test([1, 2, 3])
    with pytest.raises(ValueError, match="group 1 needs at least 2"):
        st.variance_test([1, 2, 3], [1])
    with pytest.raises(ValueError, match="center must be"):
        st.variance_test([1, 2], [3, 4], center="trimmed")


# ----------------------------------------------------------------------------- summarize
def test_summarize():
    df = pd.DataFrame({"method": ["lora"] * 3 + ["full"] * 2 + ["ia3"],
                       "task": ["vqa"] * 6,
                       "acc": [0.5, 0.6, 0.7, 0.8, 0.9, 0.4]})
    out = st.summarize(df, "acc", "method")
    assert list(out.columns) == ["method", "n", "mean", "std", "ci_low", "ci_high"]
    assert list(out["method"]) == ["full", "ia3", "lora"]  # sorted groups
    lora = out.set_index("method").loc["lora"]
    ref = st.t_ci([0.5, 0.6, 0.7])
    assert lora["n"] == 3 and lora["mean"] == pytest.approx(0.6) and lora["std"] == pytest.approx(0.1)
    assert (lora["ci_low"], lora["ci_high"]) == pytest.approx((ref.low, ref.high))
    ia3 = out.set_index("method").loc["ia3"]  # n = 1 -> std NaN, infinite CI
    assert math.isnan(ia3["std"]) and ia3["ci_low"] == -math.inf
    two = st.summarize(df, "acc", ["task", "method"], confidence=0.9)
    assert list(two.columns[:2]) == ["task", "method"] and len(two) == 3
    with pytest.raises(ValueError, match="columns not found"):
        st.summarize(df, "f1", "method")
    with pytest.raises(ValueError, match="NaN"):
        st.summarize(df.assign(acc=[0.5, np.nan, 0.7, 0.8, 0.9, 0.4]), "acc", "method")
    with pytest.raises(ValueError, match="empty"):
        st.summarize(df.iloc[:0], "acc", "method")
