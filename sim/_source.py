"""Imperfect single-photon sources, and the exact click distribution they give (decision 0017 §1-2).

**The source** is Perceval's (``Source(emission_probability, multiphoton_component,
indistinguishability)``, ``multiphoton_model="distinguishable"``, no source losses: the
chip's losses are applied where they happen). Per pulse it emits nothing, one photon
(p1) or two (p2), with p1 + p2 = brightness and g2 = 2 p2 / (p1 + 2 p2)^2. The signal
photon is in the one wavepacket every source shares with probability sqrt(M), else in
one of its own; the second photon of a pair is always distinguishable from everything.

**The click distribution** of threshold detectors, exactly. Work with
Z(T) = P(no click outside T), the zeta transform of the distribution over click
patterns T; independent sources of clicks multiply in Z, and the distribution is
Z's Moebius transform, O(m 2^m). Sum over the set S of sources whose signal is in
the shared wavepacket:

- the |S| identical photons: Z_S(T) = Perm((I - U^dagger X_T U)[S, S]), X_T = diag(eta_j
  for j outside T, else 0): the generating function of single photons through a lossy
  network (losses in the sub-unitary U and in each output's efficiency eta);
- a distinguishable photon entering i: z_i(T) = 1 - sum_{j outside T} eta_j |U_ji|^2,
  two of them z_i(T)^2;
- per source, the weights: in S, sqrt(M) (p1 + p2 z_i); not in S,
  p0 + (1 - sqrt(M)) (p1 z_i + p2 z_i^2);
- dark counts: prod_{j outside T} (1 - d_j).

A pattern T is an integer, bit j for mode j.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

PATTERN_LIMIT_MODES = 24
"""Click distributions are built up to 2^24 patterns (128 MiB of float64)."""

_CHUNK = 1 << 14
"""Patterns whose Z is computed together (bounds the (patterns, k, k) matrices of a group)."""

_BATCH_ELEMENTS = 1 << 22
"""Complex numbers one batch of Glynn sums may hold (64 MiB)."""


class SourceError(ValueError):
    """A source parameter outside its range; the message names it."""


@dataclasses.dataclass(frozen=True)
class SourceModel:
    """One single-photon source (Perceval's `Source` with ``multiphoton_model="distinguishable"``).

    Attributes:
        brightness: P(at least one photon per pulse), at the source.
        g2: g2(0) of what it emits (second-order autocorrelation at zero delay).
        indistinguishability: M, the mean overlap of two signal photons.
    """

    brightness: float = 1.0
    g2: float = 0.0
    indistinguishability: float = 1.0

    def __post_init__(self) -> None:
        for name in ("brightness", "g2", "indistinguishability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0 or math.isnan(value):
                raise SourceError(f"{name} must lie in [0, 1], got {value}")
        if 2 * self.brightness * self.g2 > 1.0:
            raise SourceError(
                f"g2 {self.g2} at brightness {self.brightness}: no photon-number distribution with at most "
                "two photons has it (2 x brightness x g2 must be at most 1)"
            )

    @property
    def ideal(self) -> bool:
        return self.brightness == 1.0 and self.g2 == 0.0 and self.indistinguishability == 1.0

    def emission(self) -> tuple[float, float, float]:
        """(p0, p1, p2): no photon, one, two, per pulse (Perceval's ``_get_probs`` with no losses)."""
        px, g2 = self.brightness, self.g2
        p2 = (1 - px * g2 - math.sqrt(1 - 2 * px * g2)) / g2 if g2 > 0 else 0.0
        p1 = px - p2
        return 1.0 - px, p1, p2


def glynn_permanents(matrices: np.ndarray) -> np.ndarray:
    """The permanents of a stack of k x k matrices, shape (..., k, k) -> (...), by Glynn's formula."""
    a = np.asarray(matrices, dtype=np.complex128)
    k = a.shape[-1]
    batch = a.shape[:-2]
    if k == 0:
        return np.ones(batch, dtype=np.complex128)
    if k == 1:
        return a[..., 0, 0].copy()
    if k == 2:
        return a[..., 0, 0] * a[..., 1, 1] + a[..., 0, 1] * a[..., 1, 0]
    if k == 3:
        return (
            a[..., 0, 0] * (a[..., 1, 1] * a[..., 2, 2] + a[..., 1, 2] * a[..., 2, 1])
            + a[..., 0, 1] * (a[..., 1, 0] * a[..., 2, 2] + a[..., 1, 2] * a[..., 2, 0])
            + a[..., 0, 2] * (a[..., 1, 0] * a[..., 2, 1] + a[..., 1, 1] * a[..., 2, 0])
        )
    # delta in {+1, -1}^k with delta_0 = +1, in Gray-code order is not needed: 2^(k-1) rows at once.
    signs = 1 - 2 * ((np.arange(1 << (k - 1))[:, None] >> np.arange(k - 1)[None, :]) & 1)
    deltas = np.concatenate([np.ones((len(signs), 1)), signs], axis=1)  # (2^(k-1), k)
    parity = np.prod(deltas, axis=1)
    flat = a.reshape(-1, k, k)
    out = np.empty(len(flat), dtype=np.complex128)
    step = max(1, _BATCH_ELEMENTS // (len(deltas) * k))
    for start in range(0, len(flat), step):
        chunk = flat[start : start + step]
        sums = np.matmul(deltas, chunk)  # (b, 2^(k-1), k): sum_i delta_i a_ij
        product = sums[:, :, 0].copy()
        for j in range(1, k):  # a product over a short axis: k multiplications, not a strided reduce
            product *= sums[:, :, j]
        out[start : start + step] = product @ parity / (1 << (k - 1))
    return out.reshape(batch)


def moebius(z: np.ndarray, modes: int) -> np.ndarray:
    """P(T) from Z(T) = sum over subsets of T of P: the inverse of the zeta transform, O(m 2^m)."""
    f = np.array(z, dtype=np.float64).reshape((2,) * modes)  # axis m-1-j is bit j
    for axis in range(modes):
        index_set: list[slice | int] = [slice(None)] * modes
        index_clear: list[slice | int] = [slice(None)] * modes
        index_set[axis], index_clear[axis] = 1, 0
        f[tuple(index_set)] -= f[tuple(index_clear)]
    return f.reshape(-1)


def click_distribution(
    unitary: np.ndarray,
    inputs: Sequence[int],
    sources: Sequence[SourceModel] | SourceModel = SourceModel(),
    *,
    efficiency: float | Sequence[float] | np.ndarray = 1.0,
    dark: float | Sequence[float] | np.ndarray = 0.0,
) -> np.ndarray:
    """P(click pattern) for a source on each of ``inputs``, threshold detectors: a (2^m,) array.

    Args:
        unitary: The m x m transfer matrix; sub-unitary for loss the same before every
            output (coupling, the balanced mesh's loss).
        inputs: The input modes that hold a source (distinct).
        sources: One model for all, or one per input.
        efficiency: Per output (or one for all): the chance a photon leaving there clicks
            its detector (output coupling x detector efficiency).
        dark: Per output (or one for all): the chance of a dark click in a shot.

    Returns:
        P[T] for every pattern T (bit j: mode j clicked); it sums to 1 (to rounding).
    """
    u = np.asarray(unitary, dtype=np.complex128)
    m = u.shape[0]
    if u.ndim != 2 or u.shape[1] != m:
        raise ValueError(f"expected a square matrix, got shape {u.shape}")
    if m > PATTERN_LIMIT_MODES:
        raise ValueError(f"{m} modes: 2^{m} click patterns is more than the {PATTERN_LIMIT_MODES}-mode limit")
    modes_in = list(inputs)
    if len(set(modes_in)) != len(modes_in) or any(not 0 <= i < m for i in modes_in):
        raise ValueError(f"inputs must be distinct modes of 0-{m - 1}, got {modes_in}")
    models = [sources] * len(modes_in) if isinstance(sources, SourceModel) else list(sources)
    if len(models) != len(modes_in):
        raise ValueError(f"{len(models)} sources for {len(modes_in)} inputs")
    eta = np.broadcast_to(np.asarray(efficiency, dtype=np.float64), (m,))
    d = np.broadcast_to(np.asarray(dark, dtype=np.float64), (m,))
    if np.any((eta < 0) | (eta > 1)) or np.any((d < 0) | (d > 1)):
        raise ValueError("efficiencies and dark-click probabilities must lie in [0, 1]")

    emissions = [model.emission() for model in models]
    roots = [math.sqrt(model.indistinguishability) for model in models]
    groups = [
        list(chosen)
        for size in range(len(modes_in) + 1)
        for chosen in itertools.combinations(range(len(modes_in)), size)
        if all(roots[i] > 0 for i in chosen)  # a source whose photons are all private is never in S
    ]
    sub = u[:, modes_in]  # (m, n): the columns the sources feed
    total = np.empty(1 << m)
    for start in range(0, 1 << m, _CHUNK):
        patterns = np.arange(start, min(start + _CHUNK, 1 << m))
        outside = ((patterns[:, None] >> np.arange(m)[None, :]) & 1) == 0  # (t, m): mode j outside T
        x = np.where(outside, eta[None, :], 0.0)  # X_T's diagonal, per pattern
        z = 1.0 - x @ (np.abs(sub) ** 2)  # (t, n): z_i(T), one distinguishable photon from input i
        inside = np.stack(
            [root * (p1 + p2 * z[:, i]) for i, ((_, p1, p2), root) in enumerate(zip(emissions, roots, strict=True))],
            axis=1,
        )  # (t, n): the source's weight with its signal in S (times its noise photon's z)
        apart = np.stack(
            [
                p0 + (1 - root) * (p1 * z[:, i] + p2 * z[:, i] ** 2)
                for i, ((p0, p1, p2), root) in enumerate(zip(emissions, roots, strict=True))
            ],
            axis=1,
        )  # (t, n): its weight with its signal private (or no photon)
        # (I - U^dagger X_T U)[sources, sources] for every T at once: one (t, m) x (m, n^2) product.
        outer = (sub.conj()[:, :, None] * sub[:, None, :]).reshape(m, -1)  # row j: conj(U_j.) U_j. over sources
        full = np.eye(len(modes_in))[None, :, :] - (x @ outer).reshape(len(patterns), len(modes_in), len(modes_in))
        acc = np.zeros(len(patterns))
        for group in groups:
            rest = [i for i in range(len(modes_in)) if i not in group]
            weight = np.prod(inside[:, group], axis=1) * np.prod(apart[:, rest], axis=1)
            if len(group) == 1:
                weight = weight * z[:, group[0]]
            elif len(group) > 1:
                a = full[:, group][:, :, group]  # Z_S(T) = Perm((I - U^dagger X_T U)[S, S])
                weight = weight * glynn_permanents(a).real
            acc += weight
        if d.any():
            acc *= np.prod(np.where(outside, 1.0 - d[None, :], 1.0), axis=1)
        total[start : start + len(patterns)] = acc
    return moebius(total, m)


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
