"""Fock-space bookkeeping: every way to put k photons in m modes, and how they connect.

Layer k lists all C(k+m-1, k) occupation patterns of k photons in m modes in a
fixed order (more photons in lower modes first). ``successor[j]`` maps each
pattern of layer k-1 to the index of the same pattern with one more photon in
mode j: that is all the SLOS-style recurrence in `sim._boson` needs to share
work between output patterns.

The rank of a pattern o (its index in its layer) has a closed form: with
r_j = o_j + ... + o_{m-1} photons from mode j on,

    rank(o) = sum_j [o_j < r_j] * C(r_j - o_j + m - j - 2, m - j - 1)

(the patterns that agree on modes < j and have more photons in mode j come
first). Tables are built once per (modes, photons) and cached.
"""

from __future__ import annotations

import functools
import math

import numpy as np

MAX_STATES = 2**22
"""Largest layer the exact methods will build (about 4 million patterns)."""


def state_count(modes: int, photons: int) -> int:
    """C(photons + modes - 1, photons): patterns of ``photons`` in ``modes``."""
    return math.comb(photons + modes - 1, photons)


@functools.lru_cache(maxsize=64)
def _binomials(size: int) -> np.ndarray:
    table = np.zeros((size + 1, size + 1), dtype=np.int64)
    for a in range(size + 1):
        for b in range(a + 1):
            table[a, b] = math.comb(a, b)
    return table


def _rank_terms(occ: np.ndarray, extra: int) -> np.ndarray:
    """The per-mode terms of the rank formula, with ``extra`` photons added to every r_j."""
    modes = occ.shape[1]
    remaining = np.cumsum(occ[:, ::-1], axis=1)[:, ::-1] + extra  # r_j
    photons = int(remaining[:, 0].max()) if len(occ) else 0
    table = _binomials(photons + modes)
    j = np.arange(modes)
    top = remaining - occ + modes - j - 2
    bottom = np.broadcast_to(modes - j - 1, occ.shape)
    terms: np.ndarray = np.where(occ < remaining, table[np.clip(top, 0, None), np.clip(bottom, 0, None)], 0)
    return terms


def rank(occupations: np.ndarray) -> np.ndarray:
    """Index of each row (an occupation pattern) within its layer."""
    occ = np.asarray(occupations, dtype=np.int64)
    ranks: np.ndarray = _rank_terms(occ, 0).sum(axis=1)
    return ranks


def successor_ranks(occupations: np.ndarray) -> np.ndarray:
    """(N, modes): the rank of each pattern with one more photon in mode j, for every j.

    Adding a photon to mode j leaves the terms for modes >= j unchanged and adds
    one to r_i for i < j, so all m successors cost one pass: O(N m), not O(N m^2).
    """
    occ = np.asarray(occupations, dtype=np.int64)
    same = _rank_terms(occ, 0)
    plus = _rank_terms(occ, 1)
    suffix = np.cumsum(same[:, ::-1], axis=1)[:, ::-1]
    prefix = np.cumsum(plus, axis=1) - plus
    ranks: np.ndarray = suffix + prefix
    return ranks


class Layer:
    """All patterns of ``photons`` photons in ``modes`` modes, in rank order.

    Attributes:
        states: (N, modes) uint8 occupation patterns.
        inv_factorial: 1 / prod_j(o_j!) per pattern.
        successor: (modes, N_prev) int64; ``successor[j, s]`` is the index in
            this layer of pattern s of the previous layer plus a photon in mode j.
        weight: (modes, N_prev) float; the photon count in mode j after adding
            it (the multiplicity the recurrence needs).
    """

    def __init__(self, modes: int, photons: int, previous: Layer | None) -> None:
        self.modes = modes
        self.photons = photons
        if photons == 0:
            self.states = np.zeros((1, modes), dtype=np.uint8)
        else:
            assert previous is not None
            # Each pattern of k photons, once: add a photon at or after the
            # highest occupied mode of each (k-1)-pattern.
            prev = previous.states
            highest = np.where(prev.any(axis=1), modes - 1 - np.argmax(prev[:, ::-1] > 0, axis=1), 0)
            repeats = modes - highest
            parents = np.repeat(np.arange(len(prev)), repeats)
            starts = np.cumsum(repeats) - repeats
            added = highest[parents] + (np.arange(len(parents)) - starts[parents])
            states = prev[parents].copy()
            states[np.arange(len(parents)), added] += 1
            order = np.argsort(rank(states), kind="stable")
            self.states = states[order]
        occ = self.states.astype(np.int64)
        factorials = np.array([math.factorial(k) for k in range(photons + 1)], dtype=np.float64)
        self.inv_factorial = 1.0 / factorials[occ].prod(axis=1)
        if previous is not None:
            prev_occ = previous.states.astype(np.int64)
            self.successor = np.ascontiguousarray(successor_ranks(prev_occ).T)
            self.weight = np.ascontiguousarray((prev_occ + 1).T, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.states)


@functools.lru_cache(maxsize=32)
def layers(modes: int, photons: int) -> tuple[Layer, ...]:
    """Layers 0..photons for ``modes`` modes (cached)."""
    if state_count(modes, photons) > MAX_STATES:
        raise ValueError(
            f"{photons} photons in {modes} modes have {state_count(modes, photons)} output patterns, "
            f"more than the {MAX_STATES} the exact method builds; sample instead"
        )
    built: list[Layer] = [Layer(modes, 0, None)]
    for k in range(1, photons + 1):
        built.append(Layer(modes, k, built[-1]))
    return tuple(built)
