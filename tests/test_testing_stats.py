"""awen.testing.stats: the chi-squared tail against closed forms and tables, and the stated false-failure rates checked.

The references are exact closed forms (Q(1, x) = exp(-x), Q(1/2, x) =
erfc(sqrt x) and the finite sums for integer and half-integer a) and the
tabulated chi-squared critical values; scipy is not a dependency. The rate
checks draw many samples from a known distribution and require the failure
fraction inside its binomial 99.9 % interval around the stated rate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from awen.testing import DistributionMismatch, FigureMismatch, assert_distribution, assert_figure
from awen.testing.stats import _continued_fraction_q, _series_p, chi2_sf, gamma_p, gamma_q

Z_999 = 3.2905  # two-sided 99.9 % normal quantile


def _q_closed_form(a2: int, x: float) -> float:
    """Q(a2/2, x) from its finite sums: integer a (Poisson tail) or half-integer a (erfc plus a sum)."""
    if a2 % 2 == 0:
        m = a2 // 2
        return math.exp(-x) * sum(x**j / math.factorial(j) for j in range(m))
    m = (a2 - 1) // 2
    return math.erfc(math.sqrt(x)) + math.exp(-x) * sum(x ** (j + 0.5) / math.gamma(j + 1.5) for j in range(m))


def _binomial_interval(trials: int, rate: float) -> tuple[float, float]:
    mean, sd = trials * rate, math.sqrt(trials * rate * (1 - rate))
    return mean - Z_999 * sd, mean + Z_999 * sd


# --- the incomplete gamma function --------------------------------------------------------


@pytest.mark.parametrize("a2", [1, 2, 3, 5, 10, 21, 80, 160])
@pytest.mark.parametrize("x", [0.01, 0.5, 1.0, 3.0, 9.5, 40.0, 75.0, 130.0])
def test_gamma_q_matches_the_closed_forms(a2: int, x: float) -> None:
    want = _q_closed_form(a2, x)
    assert gamma_q(a2 / 2, x) == pytest.approx(want, rel=1e-9, abs=1e-14)
    assert gamma_p(a2 / 2, x) == pytest.approx(1 - want, rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("x", [1e-6, 0.3, 2.0, 7.0, 50.0])
def test_q1_is_exp_minus_x(x: float) -> None:
    assert gamma_q(1.0, x) == pytest.approx(math.exp(-x), rel=1e-12)


@pytest.mark.parametrize("a", [0.5, 1.3, 4.0, 17.5, 60.0])
def test_series_and_continued_fraction_agree_either_side_of_the_switch(a: float) -> None:
    """P by the series and Q by the continued fraction, each computed independently, add to 1."""
    for x in (a + 0.5, a + 1.0, a + 2.0, a + 4.0):
        assert _series_p(a, x) + _continued_fraction_q(a, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    ("x", "dof", "p"),
    [
        # chi-squared table (critical values at 3+ decimals: the agreement is to their rounding)
        (3.841, 1, 0.05),
        (6.635, 1, 0.01),
        (10.828, 1, 0.001),
        (5.991, 2, 0.05),
        (18.307, 10, 0.05),
        (23.209, 10, 0.01),
        (29.588, 10, 0.001),
        (14.067, 7, 0.05),
        (24.322, 7, 0.001),
        (101.879, 80, 0.05),
        (124.342, 100, 0.05),
    ],
)
def test_chi2_sf_matches_the_table(x: float, dof: int, p: float) -> None:
    assert chi2_sf(x, dof) == pytest.approx(p, rel=2e-3)


def test_chi2_sf_known_values_to_1e_6() -> None:
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, abs=1e-9)  # 1.959964^2
    assert chi2_sf(100.0, 80) == pytest.approx(_q_closed_form(80, 50.0), rel=1e-9)
    assert chi2_sf(100.0, 80) == pytest.approx(0.0645704, abs=1e-6)
    assert chi2_sf(0.0, 3) == 1.0
    assert chi2_sf(1e4, 3) == pytest.approx(0.0, abs=1e-300)


def test_gamma_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="a > 0"):
        gamma_q(0.0, 1.0)
    with pytest.raises(ValueError, match="x >= 0"):
        gamma_q(1.0, -1.0)
    with pytest.raises(ValueError, match="degree"):
        chi2_sf(1.0, 0)


# --- assert_distribution ------------------------------------------------------------------


def test_a_matching_histogram_passes_and_returns_p() -> None:
    p = assert_distribution([250, 250, 250, 250], [0.25] * 4)
    assert p == pytest.approx(1.0)


def test_probabilities_must_sum_to_one_and_be_non_negative() -> None:
    with pytest.raises(ValueError, match=r"sum to 0\.9"):
        assert_distribution([1, 2], [0.5, 0.4])
    with pytest.raises(ValueError, match="non-negative"):
        assert_distribution([1, 2], [1.5, -0.5])
    with pytest.raises(ValueError, match="non-negative integers"):
        assert_distribution([1, -2], [0.5, 0.5])
    with pytest.raises(ValueError, match="bins"):
        assert_distribution([1, 2, 3], [0.5, 0.5])
    with pytest.raises(ValueError, match="no counts"):
        assert_distribution([0, 0], [0.5, 0.5])


def test_an_impossible_pattern_fails_at_once() -> None:
    with pytest.raises(DistributionMismatch, match="pattern 10 was seen 3 times where it is impossible"):
        assert_distribution([500, 0, 3, 497], [0.5, 0.0, 0.0, 0.5])
    with pytest.raises(DistributionMismatch, match="pattern 0110 was seen 1 times"):
        assert_distribution({"0101": 99, "0110": 1}, {"0101": 1.0})


def test_mapping_input_counts_absent_patterns_as_zero() -> None:
    expected = {"01": 0.5, "10": 0.5, "11": 0.0}
    assert assert_distribution({"01": 510, "10": 490}, expected) > 0.1
    with pytest.raises(DistributionMismatch, match="n=1000"):
        assert_distribution({"01": 1000}, expected)
    with pytest.raises(TypeError, match="mapping"):
        assert_distribution({"01": 1000}, [0.5, 0.5])


def test_rare_bins_are_pooled() -> None:
    """Five patterns expected 1 time each in 1000 shots: pooled into one bin of 5, so dof = 2 + 1 - 1."""
    probs = [0.5, 0.495] + [0.001] * 5
    counts = [500, 495, 1, 0, 2, 1, 1]  # the rare patterns total 5: exactly as expected once pooled
    assert assert_distribution(counts, probs) == pytest.approx(1.0)
    # one rare pattern seen 5 times, the others never: unremarkable once pooled, though its own residual is +4
    assert assert_distribution([500, 495, 5, 0, 0, 0, 0], probs) == pytest.approx(1.0)
    # the pooled bin far too full does fail, and is named as pooled
    with pytest.raises(DistributionMismatch, match="5 pooled"):
        assert_distribution([470, 470, 20, 10, 10, 10, 10], probs)


def test_a_pooled_bin_still_too_small_is_merged_into_the_smallest_bin() -> None:
    probs = [0.6, 0.39, 0.004, 0.003, 0.003]  # 1000 shots: the pool expects 10 < min_expected=20
    with pytest.raises(DistributionMismatch, match=r"dof=1\b") as err:
        assert_distribution([500, 400, 40, 30, 30], probs, min_expected=20.0)
    assert "001 + 3 pooled" in str(err.value)  # pattern 1 (390 expected) took the pool (10 expected)


def test_the_message_lists_the_worst_patterns_and_the_rate() -> None:
    probs = np.full(16, 1 / 16)
    counts = np.full(16, 625)
    counts[5] += 150
    counts[12] -= 150
    with pytest.raises(DistributionMismatch) as err:
        assert_distribution(counts, probs)
    msg = str(err.value)
    assert "n=10000" in msg
    assert "dof=15" in msg
    assert "alpha=0.001" in msg
    assert "fails this 1 time in 1000" in msg
    table = msg.split("largest standardised residuals:\n")[1].splitlines()
    assert len(table) == 1 + 5  # a header and the five worst
    assert table[1].split()[:2] == ["0101", "775"]
    assert table[2].split()[:2] == ["1100", "475"]
    assert table[1].split()[-1] == "+6.00"
    assert table[2].split()[-1] == "-6.00"


def test_labels_name_the_patterns() -> None:
    with pytest.raises(DistributionMismatch, match="HH"):
        assert_distribution([900, 100], [0.5, 0.5], labels=["HH", "VV"])


def test_false_failure_rate_is_alpha() -> None:
    """2000 samples from the expected distribution itself fail at alpha = 0.05 within the binomial 99.9 % interval."""
    rng = np.random.Generator(np.random.PCG64(20160))
    probs = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02])
    trials, alpha = 2000, 0.05
    failures = 0
    for counts in rng.multinomial(5000, probs, size=trials):
        try:
            assert_distribution(counts, probs, alpha=alpha)
        except DistributionMismatch:
            failures += 1
    low, high = _binomial_interval(trials, alpha)  # about [68, 132]
    assert low <= failures <= high, f"{failures} false failures in {trials}, expected {low:.0f}..{high:.0f}"


def test_power_against_two_bins_off_by_two_percent() -> None:
    """0.02 of probability moved between two bins is caught at n = 50000, alpha = 1e-3, in > 90 % of draws."""
    rng = np.random.Generator(np.random.PCG64(18))
    probs = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02])
    truth = probs.copy()
    truth[1] += 0.02
    truth[3] -= 0.02
    caught = 0
    for counts in rng.multinomial(50_000, truth, size=200):
        try:
            assert_distribution(counts, probs)
        except DistributionMismatch:
            caught += 1
    assert caught > 0.9 * 200


# --- assert_figure ------------------------------------------------------------------------


def test_figure_within_and_outside() -> None:
    assert_figure(0.95, 0.96, 0.005)  # 2 sigma at k = 4
    with pytest.raises(FigureMismatch, match=r"visibility = 0\.9, expected 0\.96 .* off by -12\.00 sigma") as err:
        assert_figure(0.90, 0.96, 0.005, name="visibility")
    assert "2(1 - Phi(4)) = 6.3e-05" in str(err.value)
    with pytest.raises(FigureMismatch):
        assert_figure(float("nan"), 0.0, 1.0)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf")])
def test_figure_needs_a_positive_finite_sigma(sigma: float) -> None:
    with pytest.raises(ValueError, match="sigma"):
        assert_figure(1.0, 1.0, sigma)


def test_figure_false_failure_rate() -> None:
    """20000 normal estimates at k = 2 fail 2(1 - Phi(2)) = 4.55 % of the time, within the binomial 99.9 % interval."""
    rng = np.random.Generator(np.random.PCG64(4))
    sigma, k, trials = 0.01, 2.0, 20_000
    failures = 0
    for value in rng.normal(0.9, sigma, size=trials):
        try:
            assert_figure(float(value), 0.9, sigma, k=k)
        except FigureMismatch:
            failures += 1
    low, high = _binomial_interval(trials, math.erfc(k / math.sqrt(2)))
    assert low <= failures <= high, f"{failures} false failures in {trials}, expected {low:.0f}..{high:.0f}"
