"""Our analysis: the numbers we publish, computed from counts, with their uncertainties.

Independent of awen's own figures on purpose: the tests check that the two agree.
"""

from __future__ import annotations

import math

import numpy as np

COINCIDENCE = 0b11
"""Both detectors clicked (register value 3 of a two-mode register)."""


def hom_visibility(hom: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """V = 1 - 2 C / C_ref from a HOM round and its reference, with its Poisson standard deviation."""
    c, c_ref = float(hom[COINCIDENCE]), float(reference[COINCIDENCE])
    if c_ref == 0:
        raise ValueError("no reference coincidences: no photon pairs arrived")
    ratio = c / c_ref
    sigma = 2 * ratio * math.sqrt(1 / max(c, 1) + 1 / c_ref)
    return 1 - 2 * ratio, sigma


def coincidence_ratio(hom: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """C / C_ref, with its Poisson standard deviation: 1 - (1 + V) sin^2(2 theta) / 2 for a splitter at theta."""
    c, c_ref = float(hom[COINCIDENCE]), float(reference[COINCIDENCE])
    if c_ref == 0:
        raise ValueError("no reference coincidences: no photon pairs arrived")
    ratio = c / c_ref
    return ratio, ratio * math.sqrt(1 / max(c, 1) + 1 / c_ref)


def fit_visibility(thetas: list[float], ratios: list[float], sigmas: list[float]) -> tuple[float, float]:
    """V from a splitter sweep: weighted least squares of 1 - ratio = (1 + V) / 2 sin^2(2 theta).

    Photons that are indistinguishable give V = 1 (no coincidences at pi/4), distinguishable ones V = 0.
    """
    x = np.sin(2 * np.asarray(thetas)) ** 2 / 2
    y = 1 - np.asarray(ratios)
    w = 1 / np.maximum(np.asarray(sigmas), 1e-3) ** 2
    slope = float(np.sum(w * x * y) / np.sum(w * x * x))  # slope = 1 + V, through the origin
    return slope - 1, float(1 / math.sqrt(np.sum(w * x * x)))


def router_distribution(unitary: np.ndarray, efficiencies: np.ndarray | None = None) -> dict[str, float]:
    """Where one photon into mode 0 of ``unitary`` clicks, given that exactly one detector clicked.

    Keys are patterns as awen writes them (first mode first): ``"0100"`` for mode 1 of four.
    """
    n = unitary.shape[0]
    p = np.abs(unitary[:, 0]) ** 2 * (1.0 if efficiencies is None else efficiencies)
    p = p / p.sum()
    return {"".join("1" if j == k else "0" for j in range(n)): float(p[k]) for k in range(n)}


def one_click(patterns: dict[str, int]) -> dict[str, int]:
    """The shots in which exactly one detector clicked."""
    return {pattern: count for pattern, count in patterns.items() if pattern.count("1") == 1}
