"""Sampling shots from imperfect single-photon sources (decision 0017 §2); the model and the exact
click distribution are `protocol.sources`, which the calibration shares."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from protocol.sources import SourceError as SourceError
from protocol.sources import SourceModel as SourceModel
from protocol.sources import click_distribution as click_distribution
from protocol.sources import glynn_permanents as glynn_permanents
from protocol.sources import moebius as moebius

EXACT_CLICK_MODES = 12
"""Threshold detectors on up to this many modes: shots are drawn from the exact click distribution
(computed once per setting); beyond, or with photon-number-resolving detectors, each shot's sources are
drawn and its photons sampled exactly (`sample_photons`)."""


def emission_states(model: SourceModel) -> np.ndarray:
    """A source's five states' probabilities: nothing; one shared photon; one private; shared + noise;
    private + noise (the noise photon is always private)."""
    p0, p1, p2 = model.emission()
    s = math.sqrt(model.indistinguishability)
    return np.array([p0, s * p1, (1 - s) * p1, s * p2, (1 - s) * p2])


_SHARED = np.array([0, 1, 0, 1, 0])
_PRIVATE = np.array([0, 0, 1, 1, 2])


def sample_photons(
    unitary: np.ndarray,
    inputs: Sequence[int],
    models: Sequence[SourceModel],
    shots: int,
    rng: np.random.Generator,
    ideal_sampler: Callable[[np.ndarray, Sequence[int], int, np.random.Generator], np.ndarray],
) -> np.ndarray:
    """Photon numbers leaving each output, per shot, before loss: (shots, m) int64. Exact sampling.

    Each shot draws every source's state; the photons in the shared wavepacket are drawn together
    (``ideal_sampler``: the permanent distribution, or Clifford-Clifford), each private photon alone
    from |U_ji|^2.
    """
    u = np.asarray(unitary)
    m = u.shape[0]
    counts = np.zeros((shots, m), dtype=np.int64)
    states = _draw_states(models, shots, rng)
    shared = _SHARED[states]
    keys = shared @ (1 << np.arange(len(inputs)))
    for key in np.unique(keys):
        rows = np.flatnonzero(keys == key)
        occupation = [0] * m
        for i, mode in enumerate(inputs):
            occupation[mode] += int(key) >> i & 1
        if any(occupation):
            counts[rows] += ideal_sampler(u, occupation, len(rows), rng)
    private = _PRIVATE[states]
    for i, mode in enumerate(inputs):
        column = np.abs(u[:, mode]) ** 2
        cumulative = np.cumsum(column / column.sum())
        for copy in (1, 2):
            rows = np.flatnonzero(private[:, i] >= copy)
            if len(rows):
                outs = np.searchsorted(cumulative, rng.random(len(rows)), side="right").clip(0, m - 1)
                np.add.at(counts, (rows, outs), 1)
    return counts


def source_configurations(
    inputs: Sequence[int], models: Sequence[SourceModel], modes: int, shots: int, rng: np.random.Generator
) -> tuple[list[list[tuple[int, ...]]], np.ndarray]:
    """Each shot's photons as groups of identical ones: (the distinct configurations, each shot's index).

    A configuration is a list of input occupations: the shared wavepacket's photons first, then each
    private photon alone (a private photon is distinguishable from every other).
    """
    states = _draw_states(models, shots, rng)
    keys, configuration = np.unique(states, axis=0, return_inverse=True)
    configurations = []
    for key in keys:
        shared = [0] * modes
        alone: list[tuple[int, ...]] = []
        for mode, state in zip(inputs, key.tolist(), strict=True):
            shared[mode] += int(_SHARED[state])
            alone += [tuple(1 if j == mode else 0 for j in range(modes))] * int(_PRIVATE[state])
        configurations.append([tuple(shared), *alone])
    return configurations, configuration.ravel()


def _draw_states(models: Sequence[SourceModel], shots: int, rng: np.random.Generator) -> np.ndarray:
    """(shots, n): each source's state per shot, an index into `emission_states`."""
    columns = []
    for model in models:
        p = emission_states(model)
        columns.append(rng.choice(5, size=shots, p=p / p.sum()))
    return np.stack(columns, axis=1) if columns else np.zeros((shots, 0), dtype=np.int64)


def patterns_of(indices: np.ndarray, modes: int) -> np.ndarray:
    """Click patterns (bit j: mode j) as (shots, m) uint8 rows."""
    return ((indices[:, None] >> np.arange(modes)[None, :]) & 1).astype(np.uint8)
