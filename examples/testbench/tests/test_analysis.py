"""Our analysis on its own: no lab needed."""

import math

import numpy as np
import pytest
from lakeside import coincidence_ratio, fit_visibility, hom_visibility, random_unitary, router_distribution


def test_a_perfect_dip_has_visibility_one() -> None:
    value, sigma = hom_visibility(np.array([500, 250, 250, 0]), np.array([0, 0, 0, 400]))
    assert value == 1.0
    assert sigma == pytest.approx(0.0, abs=0.01)


def test_no_reference_coincidences_is_an_error_not_a_zero() -> None:
    with pytest.raises(ValueError, match="no reference coincidences"):
        hom_visibility(np.array([10, 0, 0, 0]), np.array([10, 0, 0, 0]))


def test_the_sweep_fit_recovers_the_visibility_it_was_made_with() -> None:
    thetas = np.linspace(0, math.pi / 2, 9)
    for visibility in (1.0, 0.9, 0.0):
        ratios = 1 - (1 + visibility) / 2 * np.sin(2 * thetas) ** 2
        fitted, sigma = fit_visibility(thetas.tolist(), ratios.tolist(), [0.01] * 9)
        assert fitted == pytest.approx(visibility, abs=1e-12)
        assert sigma < 0.02


def test_the_ratio_of_a_balanced_splitter() -> None:
    ratio, sigma = coincidence_ratio(np.array([0, 0, 0, 50]), np.array([0, 0, 0, 200]))
    assert ratio == 0.25
    assert 0 < sigma < 0.05


def test_the_router_expects_the_first_column() -> None:
    u = random_unitary(3, seed=2)
    assert np.allclose(u.conj().T @ u, np.eye(3))
    expected = router_distribution(u)
    assert sorted(expected) == ["001", "010", "100"]
    assert sum(expected.values()) == pytest.approx(1.0)
    assert expected["100"] == pytest.approx(abs(u[0, 0]) ** 2)
