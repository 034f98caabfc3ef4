"""Assertions a physicist trusts: measured counts against expected probabilities, a figure within its uncertainty.

Both state how often they fail when the expectation is right, so a red CI run
can be weighed: `assert_distribution` is a likelihood-ratio (G) test that
fails a correct expectation with probability ``alpha``; `assert_figure` fails
a correct normal estimate with probability ``2 (1 - Phi(k))``. The p-value
comes from the chi-squared distribution through the regularised incomplete
gamma function (Numerical Recipes 6.2), written here because scipy is not a
dependency of awen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

_EPS = 1e-15  # relative accuracy the series and the continued fraction stop at
_TINY = 1e-300  # keeps the continued fraction's denominators off zero (Lentz)
_MAX_TERMS = 10_000  # enough for a up to ~1e7; more means the arguments are unreasonable
_WORST = 5  # patterns a failure message lists


class DistributionMismatch(AssertionError):
    """Observed counts are unlikely under the expected probabilities (p < alpha)."""


class FigureMismatch(AssertionError):
    """A figure is further from its expected value than k of its standard deviations."""


# --- the chi-squared survival function ----------------------------------------------------


def _series_p(a: float, x: float) -> float:
    """P(a, x) by its series, which converges fast for x < a + 1 (Numerical Recipes ``gser``)."""
    term = total = 1.0 / a
    ap = a
    for _ in range(_MAX_TERMS):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * _EPS:
            return total * math.exp(-x + a * math.log(x) - math.lgamma(a))
    raise ArithmeticError(f"incomplete gamma series did not converge for a={a}, x={x}")


def _continued_fraction_q(a: float, x: float) -> float:
    """Q(a, x) by its continued fraction (modified Lentz), fast for x >= a + 1 (Numerical Recipes ``gcf``)."""
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_TERMS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h * math.exp(-x + a * math.log(x) - math.lgamma(a))
    raise ArithmeticError(f"incomplete gamma continued fraction did not converge for a={a}, x={x}")


def gamma_q(a: float, x: float) -> float:
    """The regularised upper incomplete gamma function Q(a, x) = Gamma(a, x) / Gamma(a), a > 0, x >= 0."""
    if not (a > 0 and math.isfinite(a)) or not (x >= 0):
        raise ValueError(f"gamma_q needs a > 0 and x >= 0, got a={a}, x={x}")
    if x == 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    if x < a + 1.0:
        return 1.0 - _series_p(a, x)
    return _continued_fraction_q(a, x)


def gamma_p(a: float, x: float) -> float:
    """The regularised lower incomplete gamma function P(a, x) = 1 - Q(a, x)."""
    if not (a > 0 and math.isfinite(a)) or not (x >= 0):
        raise ValueError(f"gamma_p needs a > 0 and x >= 0, got a={a}, x={x}")
    if x == 0:
        return 0.0
    if math.isinf(x):
        return 1.0
    if x < a + 1.0:
        return _series_p(a, x)
    return 1.0 - _continued_fraction_q(a, x)


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X chi-squared with ``dof`` degrees of freedom: Q(dof/2, x/2)."""
    if dof < 1:
        raise ValueError(f"chi-squared needs at least 1 degree of freedom, got {dof}")
    return gamma_q(dof / 2.0, max(x, 0.0) / 2.0)


# --- assert_distribution ------------------------------------------------------------------


@dataclass(frozen=True)
class _Bin:
    """One bin of the test: the patterns it holds (one, or several pooled), observed and expected counts."""

    label: str
    observed: float
    expected: float

    @property
    def residual(self) -> float:
        return (self.observed - self.expected) / math.sqrt(self.expected)


def _as_arrays(
    counts: ArrayLike | Mapping[str, int],
    expected: ArrayLike | Mapping[str, float],
    labels: Sequence[str] | None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Counts and expected probabilities side by side, with a label per pattern."""
    if isinstance(counts, Mapping) or isinstance(expected, Mapping):
        if not (isinstance(counts, Mapping) and isinstance(expected, Mapping)):
            raise TypeError("counts as a mapping pattern -> count need expected as a mapping pattern -> probability")
        keys = [*expected, *(k for k in counts if k not in expected)]
        names = [str(k) for k in keys]
        obs = np.array([counts.get(k, 0) for k in keys], dtype=float)
        exp = np.array([expected.get(k, 0.0) for k in keys], dtype=float)
    else:
        obs = np.asarray(counts, dtype=float).ravel()
        exp = np.asarray(expected, dtype=float).ravel()
        if obs.shape != exp.shape:
            raise ValueError(f"counts has {obs.size} bins but expected has {exp.size}")
        if labels is None:
            bits = max(1, (obs.size - 1).bit_length())
            names = [format(i, f"0{bits}b") for i in range(obs.size)]
        else:
            names = [str(label) for label in labels]
            if len(names) != obs.size:
                raise ValueError(f"{len(names)} labels for {obs.size} bins")
    if not np.all(np.isfinite(obs)) or np.any(obs < 0) or np.any(obs != np.round(obs)):
        raise ValueError("counts must be non-negative integers")
    if not np.all(np.isfinite(exp)) or np.any(exp < 0):
        raise ValueError("expected probabilities must be finite and non-negative")
    total = float(exp.sum())
    if abs(total - 1.0) > 1e-9:
        raise ValueError(f"expected probabilities sum to {total!r}, not 1")
    return names, obs, exp / total


def _pool(names: list[str], obs: np.ndarray, expected_counts: np.ndarray, min_expected: float) -> list[_Bin]:
    """The test's bins: patterns expected fewer than ``min_expected`` times pooled into one.

    The chi-squared approximation to G needs a few expected counts per bin; a
    pooled bin still below ``min_expected`` is merged into the smallest other bin.
    """
    bins: list[_Bin] = []
    low: list[tuple[str, float, float]] = []
    for name, o, e in zip(names, obs, expected_counts, strict=True):
        if e <= 0:
            continue  # impossible patterns: checked (observed 0) before pooling
        if e < min_expected:
            low.append((name, float(o), float(e)))
        else:
            bins.append(_Bin(name, float(o), float(e)))
    if not low:
        return bins
    label = low[0][0] if len(low) == 1 else f"{len(low)} pooled"
    pooled = _Bin(label, sum(o for _, o, _ in low), sum(e for _, _, e in low))
    if pooled.expected >= min_expected or not bins:
        return [*bins, pooled]
    i = min(range(len(bins)), key=lambda j: bins[j].expected)
    small = bins[i]
    merged = _Bin(f"{small.label} + {label}", small.observed + pooled.observed, small.expected + pooled.expected)
    return [*bins[:i], merged, *bins[i + 1 :]]


def _g_statistic(bins: list[_Bin]) -> float:
    """G = 2 sum o ln(o / e), empty bins contributing 0."""
    return 2.0 * sum(b.observed * math.log(b.observed / b.expected) for b in bins if b.observed > 0)


def _failure_message(n: int, g: float, dof: int, p: float, alpha: float, bins: list[_Bin]) -> str:
    worst = sorted(bins, key=lambda b: -abs(b.residual))[:_WORST]
    width = max(len("pattern"), *(len(b.label) for b in worst))
    rows = [f"  {'pattern':<{width}}  {'observed':>9}  {'expected':>10}  {'(o-e)/sqrt(e)':>13}"]
    rows += [f"  {b.label:<{width}}  {b.observed:>9.0f}  {b.expected:>10.1f}  {b.residual:>+13.2f}" for b in worst]
    return (
        f"counts do not follow the expected distribution: n={n}, G={g:.2f}, dof={dof}, p={p:.3g} < alpha={alpha:g}\n"
        f"(false-failure rate alpha: a correct expectation fails this 1 time in {1 / alpha:.0f})\n"
        f"largest standardised residuals:\n" + "\n".join(rows)
    )


def assert_distribution(
    counts: ArrayLike | Mapping[str, int],
    expected: ArrayLike | Mapping[str, float],
    *,
    alpha: float = 1e-3,
    min_expected: float = 5.0,
    labels: Sequence[str] | None = None,
) -> float:
    """Assert that ``counts`` were drawn from ``expected``; return the test's p-value.

    ``counts``: a histogram (``Result.counts(reg)``, pattern ``v`` at index ``v``)
    or a mapping pattern -> count (``Result.patterns(reg)``, then ``expected`` is a
    mapping pattern -> probability, absent patterns counted 0). A likelihood-ratio
    (G) test with bins expected fewer than ``min_expected`` times pooled, its
    p-value from chi-squared with bins - 1 degrees of freedom; it raises
    `DistributionMismatch` when p < ``alpha``, so a correct expectation fails with
    probability ``alpha``. A pattern seen where its probability is 0 fails at once.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    names, obs, probs = _as_arrays(counts, expected, labels)
    n = int(obs.sum())
    if n == 0:
        raise ValueError("no counts: a distribution cannot be tested on 0 shots")
    for name, o, p in zip(names, obs, probs, strict=True):
        if p == 0 and o > 0:
            raise DistributionMismatch(f"pattern {name} was seen {o:.0f} times where it is impossible (probability 0)")
    bins = _pool(names, obs, n * probs, min_expected)
    if len(bins) < 2:
        return 1.0  # all expected mass in one bin: nothing to test beyond the impossible patterns
    g, dof = _g_statistic(bins), len(bins) - 1
    p_value = chi2_sf(g, dof)
    if p_value < alpha:
        raise DistributionMismatch(_failure_message(n, g, dof, p_value, alpha, bins))
    return p_value


# --- assert_figure ------------------------------------------------------------------------


def assert_figure(value: float, expected: float, sigma: float, *, k: float = 4.0, name: str = "figure") -> None:
    """Assert |value - expected| <= k sigma, for a figure (a visibility, a fidelity) with standard deviation sigma.

    For a normally distributed estimate a correct expectation fails with
    probability 2 (1 - Phi(k)) (6.3e-5 at the default k = 4); the message says so.
    """
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be positive and finite, got {sigma}")
    if not (k > 0 and math.isfinite(k)):
        raise ValueError(f"k must be positive and finite, got {k}")
    diff = value - expected
    if not abs(diff) <= k * sigma:  # also fails a NaN value
        rate = math.erfc(k / math.sqrt(2.0))
        raise FigureMismatch(
            f"{name} = {value:.6g}, expected {expected:.6g} +- {k:g} x {sigma:.3g}: off by {diff / sigma:+.2f} sigma "
            f"(false-failure rate for a normal estimate: 2(1 - Phi({k:g})) = {rate:.2g}, 1 time in {1 / rate:.0f})"
        )
