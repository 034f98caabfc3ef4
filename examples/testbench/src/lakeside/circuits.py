"""Our circuit library: each experiment as an awen circuit, built the same way every time."""

from __future__ import annotations

import math

import numpy as np

from awen import CircuitBuilder


def hom(shots: int = 4000, theta: float = math.pi / 4) -> CircuitBuilder:
    """Two photons on a beam splitter of angle ``theta`` (register ``hom``), then without it (``reference``).

    The reference round counts the coincidences that arrive with no interference, so the ratio of the two
    does not depend on the losses; awen computes the visibility figure from the two registers.
    """
    return (
        CircuitBuilder(2, shots=shots, name=f"lakeside-hom-{theta:.4f}")
        .input(0)
        .input(1)
        .bs(0, 1, theta=theta)
        .measure([0, 1], "hom")
        .input(0)
        .input(1)
        .measure([0, 1], "reference")
        .figure("hom_visibility", "hom", reference="reference", name="visibility")
    )


def splitter_sweep(points: int = 9, shots: int = 2000) -> list[tuple[float, CircuitBuilder]]:
    """The HOM circuit at ``points`` beam-splitter angles from 0 to pi/2: the dip, point by point."""
    return [(theta, hom(shots, theta)) for theta in np.linspace(0.0, math.pi / 2, points).tolist()]


def photon_router(unitary: np.ndarray, shots: int = 3000) -> CircuitBuilder:
    """One photon into mode 0 of ``unitary``; every output mode read (register ``out``)."""
    n = unitary.shape[0]
    return (
        CircuitBuilder(n, shots=shots, name=f"lakeside-router-{n}")
        .input(0)
        .unitary(list(range(n)), unitary)
        .measure(list(range(n)), "out")
    )


def random_unitary(n: int, seed: int) -> np.ndarray:
    """A Haar-random n x n unitary (QR of a complex Gaussian matrix, phases fixed), from ``seed``."""
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) / math.sqrt(2)
    q, r = np.linalg.qr(z)
    phases = np.diagonal(r) / np.abs(np.diagonal(r))
    unitary: np.ndarray = q * phases
    return unitary
