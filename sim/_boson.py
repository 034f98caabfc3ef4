"""Exact multi-photon output distributions of a linear-optical network.

The amplitude of output pattern t for single photons entering modes
i_1..i_n is the permanent Perm(U[rows(t), (i_1..i_n)]). Expanding along the
last column shares the work between all output patterns (the SLOS idea):

    c_k(t) = sum_j t_j * U[j, i_k] * c_{k-1}(t - e_j)

so layer k of the amplitudes follows from layer k-1 in O(m * N_{k-1})
operations, and P(t) = |c_n(t)|^2 / (prod t! * prod s!) for input occupation s.
The hot path returns arrays; `output_distribution` wraps them in a dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._fock import Layer, layers

_DENSE_LIMIT = 100_000
"""Above this many (mode, pattern) pairs a layer is built mode by mode, to bound memory."""


def _inputs(photons: Sequence[int], modes: int) -> list[int]:
    if len(photons) != modes:
        raise ValueError(f"the input has {len(photons)} modes, the unitary {modes}")
    if any(p < 0 for p in photons):
        raise ValueError(f"photon numbers must be >= 0, got {list(photons)}")
    return [mode for mode, count in enumerate(photons) for _ in range(count)]


def _check_unitary(unitary: np.ndarray) -> np.ndarray:
    u = np.asarray(unitary, dtype=np.complex128)
    if u.ndim != 2 or u.shape[0] != u.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {u.shape}")
    return u


def _step(layer: Layer, column: np.ndarray, previous: np.ndarray) -> np.ndarray:
    modes, count = layer.successor.shape
    if modes * count <= _DENSE_LIMIT:
        contributions = layer.weight * np.outer(column, previous)
        index = layer.successor.ravel()
        flat = contributions.ravel()
        real = np.bincount(index, weights=flat.real, minlength=len(layer))
        imag = np.bincount(index, weights=flat.imag, minlength=len(layer))
        return real + 1j * imag
    current = np.zeros(len(layer), dtype=np.complex128)
    for j in range(modes):
        # For a fixed j, s -> s + e_j is one-to-one, so the indexed += is exact.
        current[layer.successor[j]] += layer.weight[j] * (column[j] * previous)
    return current


def permanent_amplitudes(unitary: np.ndarray, photons: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Perm(U[rows(t), inputs]) for every output pattern t.

    Returns:
        (states, coefficients): states is (N, m) uint8, in the order of
        `sim._fock.layers`; coefficients the permanents (not yet normalised).
    """
    u = _check_unitary(unitary)
    modes = u.shape[0]
    inputs = _inputs(photons, modes)
    table = layers(modes, len(inputs))
    coefficients = np.ones(1, dtype=np.complex128)
    for k, mode in enumerate(inputs, start=1):
        coefficients = _step(table[k], u[:, mode], coefficients)
    return table[len(inputs)].states, coefficients


def output_probabilities(unitary: np.ndarray, photons: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Probability of every output pattern, ideal and lossless.

    Args:
        unitary: The m x m transfer matrix.
        photons: Input occupation per mode, e.g. (1, 1, 0, 0).

    Returns:
        (states, probabilities): (N, m) uint8 patterns and their probabilities.
    """
    states, coefficients = permanent_amplitudes(unitary, photons)
    n = sum(photons)
    input_factorial = math.prod(math.factorial(p) for p in photons)
    probabilities = (coefficients.real**2 + coefficients.imag**2) * layers(len(photons), n)[n].inv_factorial
    if input_factorial != 1:
        probabilities /= input_factorial
    return states, probabilities


def lossy_probabilities(
    unitary: np.ndarray, photons: Sequence[int], transmission: float | Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of the photon numbers that survive loss, for every pattern of 0..n photons.

    ``transmission`` is each output mode's chance to keep a photon (one number
    for all, or one per mode). Loss that is the same on every input commutes
    with the network, so it belongs here too (docs/simulator.md). Each
    photon leaving mode j survives independently: binomial thinning of the
    exact lossless distribution, mode by mode.
    """
    states, probabilities = output_probabilities(unitary, photons)
    m = states.shape[1]
    eta = np.broadcast_to(np.asarray(transmission, dtype=np.float64), (m,))
    if np.any((eta < 0) | (eta > 1)):
        raise ValueError(f"transmissions must lie in [0, 1], got {eta.tolist()}")
    current = states.astype(np.int64)
    weights = probabilities
    n = sum(photons)
    for j in range(m):
        counts = current[:, j]
        rows, kept, probs = [], [], []
        for k in range(n + 1):
            # Keep k of the photons in mode j, where there are at least k.
            has = np.flatnonzero(counts >= k)
            if len(has) == 0:
                break
            t = counts[has]
            binomial = np.array([math.comb(int(x), k) for x in t], dtype=np.float64)
            rows.append(has)
            kept.append(np.full(len(has), k))
            probs.append(weights[has] * binomial * eta[j] ** k * (1 - eta[j]) ** (t - k))
        index = np.concatenate(rows)
        expanded = current[index].copy()
        expanded[:, j] = np.concatenate(kept)
        merged, inverse = np.unique(expanded, axis=0, return_inverse=True)
        weights = np.bincount(inverse.ravel(), weights=np.concatenate(probs), minlength=len(merged))
        current = merged
    return current.astype(np.uint8), weights


def output_distribution(
    unitary: np.ndarray, photons: Sequence[int], transmission: float | Sequence[float] | None = None
) -> dict[tuple[int, ...], float]:
    """``{output occupation: probability}`` for ``photons`` through ``unitary``.

    Ideal and lossless by default: every pattern with the right photon number
    is present, zeros included. With ``transmission`` (per output mode, or one
    number), the distribution of the photons that survive loss.
    """
    if transmission is None:
        states, probabilities = output_probabilities(unitary, photons)
    else:
        states, probabilities = lossy_probabilities(unitary, photons, transmission)
    return dict(zip(map(tuple, states.tolist()), probabilities.tolist(), strict=True))
