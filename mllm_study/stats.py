"""Statistics for reporting every number with its uncertainty: CIs, paired tests, corrections.

Usage: ``from mllm_study.stats import t_ci, paired_t_test; print(t_ci(scores))``

All functions are small and pure: 1-D numeric input (lists, numpy arrays, pandas Series) in,
an :class:`Interval` / :class:`TestResult` dataclass or a float array out. Inputs are validated:
NaN/inf, too few values and unequal paired lengths raise ``ValueError`` with a clear message.
Tests are two-sided. Randomised procedures take an explicit ``seed`` and are reproducible.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _ss
from scipy.special import ndtr, ndtri

from .errors import ConfigError, DataError

__all__ = [
    "Interval", "TestResult", "t_ci", "bootstrap_ci", "paired_bootstrap_ci", "paired_t_test",
    "wilcoxon_test", "permutation_test", "holm_correction", "reject", "friedman_test",
    "variance_test", "summarize", "format_mean_ci",
]

EXACT_PERMUTATION_MAX_N = 12  # 2**12 = 4096 sign patterns: cheap enough to enumerate exactly


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval.

    Attributes:
        estimate, low, high: Point estimate and confidence bounds.
        method: How it was computed (``"t"``, ``"bootstrap-percentile"``, ...).
        n: Number of observations (pairs for paired intervals).
    """

    estimate: float
    low: float
    high: float
    method: str
    n: int

    @property
    def half_width(self) -> float:
        """Half of ``high - low`` (the "±" part for symmetric intervals)."""
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return format_mean_ci(self)


@dataclass(frozen=True)
class TestResult:
    """Result of a hypothesis test together with an effect size.

    Attributes:
        name, statistic, p_value: Test name, statistic and two-sided p-value in [0, 1].
        effect_size, effect_size_name: e.g. ``"cohen_dz"``, ``"rank_biserial"``, ``"kendall_w"``.
        n: Sample size (pairs, blocks for Friedman, total observations for variance tests).
        extra: Test-specific details (degrees of freedom, average ranks, ...).
    """

    __test__ = False  # keep pytest from trying to collect this class

    name: str
    statistic: float
    p_value: float
    effect_size: float
    effect_size_name: str
    n: int
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return (f"{self.name}: statistic={self.statistic:.4g}, p={self.p_value:.4g}, "
                f"{self.effect_size_name}={self.effect_size:.3g}, n={self.n}")


def _as_1d(x: Any, name: str, min_n: int = 1) -> np.ndarray:
    """Convert to a finite 1-D float array with at least ``min_n`` values, else ValueError."""
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be numeric: {exc}") from exc
    if arr.ndim != 1:
        raise DataError(f"{name} must be 1-D, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise DataError(f"{name} contains {int(np.isnan(arr).sum())} NaN value(s)")
    if np.isinf(arr).any():
        raise DataError(f"{name} contains infinite value(s)")
    if arr.size < min_n:
        raise DataError(f"{name} needs at least {min_n} value(s), got {arr.size}")
    return arr


def _paired_diff(a: Any, b: Any, min_n: int = 2) -> np.ndarray:
    """Validated paired differences ``a - b``."""
    a_, b_ = _as_1d(a, "a"), _as_1d(b, "b")
    if a_.size != b_.size:
        raise DataError(f"paired samples must have the same length; got {a_.size} and {b_.size}")
    return _as_1d(a_ - b_, "a - b", min_n)


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")


def _dz(d: np.ndarray) -> float:
    """Cohen's d_z = mean(d) / sd(d, ddof=1); 0 if all d == 0, ±inf if d is a nonzero constant."""
    m, s = float(d.mean()), float(d.std(ddof=1))
    if s == 0:
        return 0.0 if m == 0 else math.copysign(math.inf, m)
    return m / s


def t_ci(x: Any, confidence: float = 0.95) -> Interval:
    """Student-t confidence interval for the mean.

    Args:
        x: 1-D sample (e.g. one score per seed).
        confidence: Coverage level in (0, 1).

    Caveats:
        Assumes approximately normal data or a large n. With n = 1 the spread is unknown:
        the interval is (-inf, inf) rather than an error. Zero variance gives a zero-width interval.
    """
    _check_confidence(confidence)
    arr = _as_1d(x, "x", 1)
    n, mean = arr.size, float(arr.mean())
    if n == 1:
        return Interval(mean, -math.inf, math.inf, "t", 1)
    # Formula: mean ± t_{1-α/2, n-1} · s / sqrt(n), with s the ddof=1 standard deviation.
    half = float(_ss.t.ppf(0.5 + confidence / 2, n - 1)) * float(arr.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, "t", n)


def _apply_stat(statistic: Callable, samples: np.ndarray) -> np.ndarray:
    """Apply ``statistic`` to each row of a 2-D array (vectorised via ``axis=-1`` if accepted)."""
    try:
        out = np.asarray(statistic(samples, axis=-1), dtype=float)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([float(statistic(row)) for row in samples])


def bootstrap_ci(x: Any, statistic: Callable = np.mean, confidence: float = 0.95,
                 n_resamples: int = 2000, seed: int | np.random.Generator | None = 0,
                 method: str = "percentile") -> Interval:
    """Nonparametric bootstrap confidence interval for ``statistic(x)``.

    Resamples are drawn exactly like ``scipy.stats.bootstrap`` (``rng.integers(0, n, (B, n))``
    with ``rng = np.random.default_rng(seed)``), so results match scipy for the same seed.

    Args:
        x: 1-D sample with at least 2 values.
        statistic: Callable, 1-D array -> scalar; called vectorised if it accepts ``axis``.
        confidence: Coverage level in (0, 1).
        n_resamples: Number of bootstrap resamples B.
        seed: Seed or Generator for reproducibility.
        method: ``"percentile"`` or ``"bca"`` (bias-corrected and accelerated).

    Returns:
        Interval with method ``"bootstrap-percentile"`` or ``"bootstrap-bca"``.
    Caveats:
        Percentile intervals under-cover for small n (roughly n < 20); BCa corrects bias and
        skew but is still Monte Carlo: bounds vary with ``seed`` by O(1/sqrt(B)). BCa returns NaN
        bounds when the bootstrap distribution lies entirely on one side of the estimate.
    """
    _check_confidence(confidence)
    if method not in ("percentile", "bca"):
        raise ConfigError(f"method must be 'percentile' or 'bca', got {method!r}")
    if int(n_resamples) < 1:
        raise ConfigError(f"n_resamples must be >= 1, got {n_resamples}")
    arr = _as_1d(x, "x", 2)
    n, rng = arr.size, np.random.default_rng(seed)
    theta_hat = float(statistic(arr))
    theta_b = _apply_stat(statistic, arr[rng.integers(0, n, (int(n_resamples), n))])
    alpha = (1 - confidence) / 2
    if method == "percentile":  # Formula: [q_{α/2}, q_{1-α/2}] of θ*_b (linear interpolation).
        probs = np.array([alpha, 1 - alpha])
    else:
        # Formula (Efron & Tibshirani 1993, eq. 14.10-14.15): z0 = Φ^{-1}(share of θ*_b < θ̂,
        # ties counted half); a = Σ D_i^3 / (6 (Σ D_i^2)^{3/2}), D_i = mean(θ_(·)) - θ_(i) over
        # jackknife values; probs = Φ(z0 + (z0+z)/(1-a(z0+z))) for z = z_{α/2}, z_{1-α/2}.
        below = (theta_b < theta_hat).sum() + (theta_b <= theta_hat).sum()
        z0 = ndtri(below / (2 * theta_b.size))
        jack = _apply_stat(statistic, np.array([np.delete(arr, i) for i in range(n)]))
        dev = jack.mean() - jack
        den = 6 * float(np.sum(dev**2)) ** 1.5
        acc = float(np.sum(dev**3)) / den if den > 0 else 0.0
        z = np.array([ndtri(alpha), -ndtri(alpha)])
        probs = ndtr(z0 + (z0 + z) / (1 - acc * (z0 + z)))
    if not np.all(np.isfinite(probs)):
        return Interval(theta_hat, math.nan, math.nan, f"bootstrap-{method}", n)
    low, high = np.quantile(theta_b, probs)
    return Interval(theta_hat, float(low), float(high), f"bootstrap-{method}", n)


def paired_bootstrap_ci(a: Any, b: Any, confidence: float = 0.95, n_resamples: int = 2000,
                        seed: int | np.random.Generator | None = 0,
                        method: str = "percentile") -> Interval:
    """Bootstrap CI for the mean difference ``mean(a - b)`` over paired items.

    Pairs are resampled together (item i keeps both of its scores), which is equivalent to
    bootstrapping the per-item differences. Arguments as in :func:`bootstrap_ci`.

    Returns:
        Interval of ``mean(a - b)``; method ``"paired-bootstrap-<method>"``.

    Caveats:
        Items must be exchangeable; clustered items (e.g. several questions per image) need a
        cluster bootstrap instead, otherwise the interval is too narrow.
    """
    d = _paired_diff(a, b, 2)
    iv = bootstrap_ci(d, np.mean, confidence, n_resamples, seed, method)
    return Interval(iv.estimate, iv.low, iv.high, f"paired-{iv.method}", iv.n)


def paired_t_test(a: Any, b: Any) -> TestResult:
    """Two-sided paired t-test of ``mean(a - b) == 0`` with Cohen's d_z.

    Returns:
        TestResult: statistic t, effect ``cohen_dz``, extra ``df``, ``mean_diff``, ``sd_diff``.

    Caveats:
        Assumes roughly normal differences. All-zero differences give t = 0, p = 1; constant
        nonzero differences give t = ±inf, p = 0 (and d_z = ±inf).
    """
    d = _paired_diff(a, b, 2)
    n, m, s = d.size, float(d.mean()), float(d.std(ddof=1))
    # Formula: t = mean(d) / (sd(d) / sqrt(n)), df = n - 1, p = 2 · P(T_{n-1} >= |t|);
    # d_z = mean(d) / sd(d).
    t = m / (s / math.sqrt(n)) if s > 0 else (0.0 if m == 0 else math.copysign(math.inf, m))
    p = 1.0 if t == 0 else float(min(1.0, 2 * _ss.t.sf(abs(t), n - 1)))
    return TestResult("paired t-test", t, p, _dz(d), "cohen_dz", n,
                      {"df": n - 1, "mean_diff": m, "sd_diff": s})


def wilcoxon_test(a: Any, b: Any) -> TestResult:
    """Wilcoxon signed-rank test (two-sided) with the matched-pairs rank-biserial correlation.

    Zero differences are dropped (``zero_method="wilcox"``); statistic (min(W+, W-)) and p come
    from ``scipy.stats.wilcoxon``.

    Returns:
        TestResult: effect ``rank_biserial`` in [-1, 1] (positive: a > b), extra ``w_plus``,
        ``w_minus``, ``n_nonzero``.

    Caveats:
        The rank-biserial is computed on nonzero differences only. All-zero differences give
        statistic 0, p = 1, r = 0.
    """
    d = _paired_diff(a, b, 2)
    nz = d[d != 0]
    if nz.size == 0:
        return TestResult("wilcoxon signed-rank", 0.0, 1.0, 0.0, "rank_biserial", d.size,
                          {"w_plus": 0.0, "w_minus": 0.0, "n_nonzero": 0})
    # Formula (Kerby 2014): r = (W+ - W-) / (W+ + W-), W± = sum of ranks of |d| with sign ±;
    # W+ + W- = m(m+1)/2 for m nonzero differences.
    ranks = _ss.rankdata(np.abs(nz))
    w_plus, w_minus = float(ranks[nz > 0].sum()), float(ranks[nz < 0].sum())
    res = _ss.wilcoxon(d, zero_method="wilcox")
    return TestResult("wilcoxon signed-rank", float(res.statistic), float(res.pvalue),
                      (w_plus - w_minus) / (w_plus + w_minus), "rank_biserial", d.size,
                      {"w_plus": w_plus, "w_minus": w_minus, "n_nonzero": int(nz.size)})


def permutation_test(a: Any, b: Any, n_resamples: int = 10000,
                     seed: int | np.random.Generator | None = 0) -> TestResult:
    """Paired sign-flip permutation test of the mean difference (two-sided).

    Under H0 each difference d_i is equally likely to be +|d_i| or -|d_i|. For n <= 12 all 2^n
    sign patterns are enumerated (exact p); otherwise ``n_resamples`` random patterns are used.

    Returns:
        TestResult: statistic ``mean(a - b)``, effect ``cohen_dz``, extra ``method``
        (``"exact"``/``"monte_carlo"``), ``n_permutations``.

    Caveats:
        Monte Carlo p uses the +1 correction, so it is never 0 (min 1/(B+1)) and is valid, not
        exact. All-zero differences give p = 1.
    """
    if int(n_resamples) < 1:
        raise ConfigError(f"n_resamples must be >= 1, got {n_resamples}")
    d = _paired_diff(a, b, 2)
    n, observed = d.size, float(d.mean())
    # Formula: p = #{|mean(s·d)| >= |mean(d)|} / 2^n over all s in {-1,1}^n (exact), or
    # (1 + #{...}) / (B + 1) over B random s (Monte Carlo, Phipson & Smyth 2010).
    thresh = abs(observed) - 1e-12 * float(np.abs(d).mean())  # float-noise ties count as ">="
    if n <= EXACT_PERMUTATION_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        count = int(np.sum(np.abs(signs @ d / n) >= thresh))
        p, method, n_perm = count / signs.shape[0], "exact", signs.shape[0]
    else:
        rng, count, left = np.random.default_rng(seed), 0, int(n_resamples)
        while left > 0:  # batches keep memory at <= 1000 x n
            k = min(left, 1000)
            signs = rng.choice(np.array([-1.0, 1.0]), size=(k, n))
            count += int(np.sum(np.abs(signs @ d / n) >= thresh))
            left -= k
        p, method, n_perm = (count + 1) / (int(n_resamples) + 1), "monte_carlo", int(n_resamples)
    return TestResult("paired permutation (sign-flip)", observed, float(min(p, 1.0)), _dz(d),
                      "cohen_dz", n, {"method": method, "n_permutations": n_perm})


def holm_correction(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values (family-wise error control).

    Args:
        p_values: 1-D p-values in [0, 1] (may be empty).

    Returns:
        Adjusted p-values in the original order; monotone in the raw p and capped at 1.

    Caveats:
        Controls FWER under any dependence; conservative when tests are strongly correlated.
    """
    p = _as_1d(p_values, "p_values", 0)
    if (p < 0).any() or (p > 1).any():
        raise DataError("p_values must lie in [0, 1]")
    # Formula: sort p_(1) <= ... <= p_(m); adj_(i) = min(1, max_{j<=i} (m - j + 1) p_(j)).
    m, order = p.size, np.argsort(p, kind="stable")
    out = np.empty(m)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def reject(p_adjusted: Sequence[float] | np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Boolean mask ``p_adjusted <= alpha``. Pass *adjusted* p (e.g. :func:`holm_correction`)."""
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    return np.asarray(p_adjusted, dtype=float) <= alpha


def friedman_test(table: np.ndarray | pd.DataFrame, higher_is_better: bool = True) -> TestResult:
    """Friedman test over blocks (e.g. tasks/seeds) x treatments (e.g. PEFT methods).

    Args:
        table: (n_blocks x k_treatments) array or DataFrame whose columns are the treatments.
        higher_is_better: If True the largest score in a block gets rank 1 (best).

    Returns:
        TestResult with the (tie-corrected) chi-square statistic from
        ``scipy.stats.friedmanchisquare``, effect size Kendall's W and extra ``average_ranks``
        (dict treatment -> mean rank, 1 = best), ``df``, ``k``.

    Caveats:
        The chi-square approximation is rough for small n (say n < 10); W uses the tie-corrected
        statistic. If every block is fully tied, statistic = 0, p = 1, W = 0.
    """
    if isinstance(table, pd.DataFrame):
        names, values = [str(c) for c in table.columns], table.to_numpy(dtype=float)
    else:
        values = np.asarray(table, dtype=float)
        names = [str(j) for j in range(values.shape[1])] if values.ndim == 2 else []
    if values.ndim != 2:
        raise DataError(f"table must be 2-D (n_blocks x k_treatments), got shape {values.shape}")
    n, k = values.shape
    if k < 3 or n < 2:
        raise DataError(f"friedman_test needs >= 2 blocks (rows) and >= 3 treatments (columns), "
                        f"got {n} x {k}")
    _as_1d(values.ravel(), "table")
    ranks = _ss.rankdata(-values if higher_is_better else values, axis=1)
    avg = dict(zip(names, (float(r) for r in ranks.mean(axis=0))))
    extra = {"average_ranks": avg, "df": k - 1, "k": k}
    if np.all(values == values[:, :1]):
        return TestResult("friedman", 0.0, 1.0, 0.0, "kendall_w", n, extra)
    # Formula: chi2 = [12/(n k (k+1)) Σ_j R_j^2 - 3 n (k+1)] / C, R_j = rank sum of treatment j,
    # C = 1 - Σ(t^3 - t)/(n k (k^2 - 1)) (ties); Kendall's W = chi2 / (n (k - 1)).
    chi2, p = (float(v) for v in _ss.friedmanchisquare(*values.T))
    return TestResult("friedman", chi2, p, chi2 / (n * (k - 1)), "kendall_w", n, extra)


def variance_test(*groups: Any, center: str = "median") -> TestResult:
    """Brown–Forsythe (``center="median"``) or Levene (``center="mean"``) equal-variance test.

    Useful to ask whether methods differ in seed-to-seed stability.

    Args:
        *groups: Two or more 1-D samples, each with at least 2 values.
        center: ``"median"`` (Brown–Forsythe, robust to non-normality) or ``"mean"`` (Levene).

    Returns:
        TestResult with W from ``scipy.stats.levene``, effect size ``variance_ratio`` (largest /
        smallest sample variance), extra ``df`` (k-1, N-k) and ``variances``.

    Caveats:
        Low power with few values per group. If all groups are constant: statistic 0, p = 1,
        ratio 1; if only some are, the ratio is inf.
    """
    if center not in ("median", "mean"):
        raise ConfigError(f"center must be 'median' or 'mean', got {center!r}")
    if len(groups) < 2:
        raise DataError(f"variance_test needs at least 2 groups, got {len(groups)}")
    arrs = [_as_1d(g, f"group {i}", 2) for i, g in enumerate(groups)]
    name = "brown-forsythe" if center == "median" else "levene"
    variances = [float(g.var(ddof=1)) for g in arrs]
    vmax, vmin = max(variances), min(variances)
    ratio = 1.0 if vmax == 0 else (math.inf if vmin == 0 else vmax / vmin)
    total = sum(g.size for g in arrs)
    extra = {"df": (len(arrs) - 1, total - len(arrs)), "variances": variances}
    # Formula: z_ij = |x_ij - c_i| (c_i = group median or mean); W = one-way ANOVA F on z:
    # W = (N-k)/(k-1) · Σ n_i (z̄_i - z̄)^2 / ΣΣ (z_ij - z̄_i)^2 ~ F(k-1, N-k).
    dev = [np.abs(g - (np.median(g) if center == "median" else g.mean())) for g in arrs]
    if all(np.all(z == 0) for z in dev):
        return TestResult(name, 0.0, 1.0, ratio, "variance_ratio", total, extra)
    with np.errstate(divide="ignore", invalid="ignore"):
        res = _ss.levene(*arrs, center=center)
    return TestResult(name, float(res.statistic), float(res.pvalue), ratio, "variance_ratio",
                      total, extra)


def summarize(df: pd.DataFrame, value: str, by: str | Sequence[str],
              confidence: float = 0.95) -> pd.DataFrame:
    """Per-group n, mean, std (ddof=1) and t-based CI, for report tables.

    Args:
        df: Long-format results, one row per observation (e.g. per seed).
        value, by: Numeric column to summarise; grouping column(s).
        confidence: CI coverage level.

    Returns:
        DataFrame with the ``by`` columns then ``n, mean, std, ci_low, ci_high``, sorted by group.

    Caveats:
        Groups with n = 1 get std NaN and an infinite CI (see :func:`t_ci`). NaN values raise
        rather than being silently dropped: a missing run should be visible.
    """
    _check_confidence(confidence)
    keys = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [value, *keys] if c not in df.columns]
    if missing:
        raise DataError(f"columns not found in df: {missing}")
    if df.empty:
        raise DataError("df is empty")
    _as_1d(df[value].to_numpy(), f"column {value!r}", 1)
    rows = []
    for key, grp in df.groupby(keys, sort=True, dropna=False):
        x = grp[value].to_numpy(dtype=float)
        iv = t_ci(x, confidence)
        std = float(x.std(ddof=1)) if x.size > 1 else math.nan
        rows.append([*key, x.size, iv.estimate, std, iv.low, iv.high])
    return pd.DataFrame(rows, columns=[*keys, "n", "mean", "std", "ci_low", "ci_high"])


def format_mean_ci(interval: Interval, digits: int = 3) -> str:
    """Format an interval as ``"0.512 [0.480, 0.544]"`` with ``digits`` decimals."""
    f = f"{{:.{int(digits)}f}}"
    return f"{f.format(interval.estimate)} [{f.format(interval.low)}, {f.format(interval.high)}]"
