"""Imperfect single-photon sources, and the exact click distribution they give (decision 0017 §1-2).

Shared by the simulator (which draws shots from it) and the calibration (which fits a
chip's sources with it), as `protocol.mesh` is.

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
from collections.abc import Sequence

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


BALANCED = np.array([[1, 1j], [1j, 1]]) / math.sqrt(2)
"""A balanced coupler's transfer matrix."""


def hom_visibility(
    sources: Sequence[SourceModel],
    *,
    efficiency: Sequence[float] | np.ndarray = (1.0, 1.0),
    dark: Sequence[float] | np.ndarray = (0.0, 0.0),
    transmission: Sequence[float] | np.ndarray = (1.0, 1.0),
) -> float:
    """1 - 2 C(coupler) / C(no coupler) for two sources, exactly: the figure `HomVisibility` measures.

    C is the chance both outputs click, behind a balanced coupler and without one; ``transmission``
    is each source's path to the coupler, ``efficiency`` and ``dark`` the two outputs' (a click's
    chance per photon, a dark click's per shot).
    """
    kw = {"efficiency": np.asarray(efficiency, dtype=np.float64), "dark": np.asarray(dark, dtype=np.float64)}
    path = np.diag(np.sqrt(np.asarray(transmission, dtype=np.float64)))
    dip = click_distribution(BALANCED @ path, [0, 1], sources, **kw)[0b11]
    reference = click_distribution(path, [0, 1], sources, **kw)[0b11]
    return float(1.0 - 2.0 * dip / reference) if reference > 0 else 1.0


def survival_for(clicks: float, source: SourceModel) -> float:
    """The chance each photon of ``source`` survives to a detector that clicks ``clicks`` of the
    pulses (dark counts aside): p1 s + p2 (1 - (1 - s)^2) = clicks, by bisection; out of reach, 1."""
    _, p1, p2 = source.emission()

    def clicking(s: float) -> float:
        return p1 * s + p2 * (1 - (1 - s) ** 2)

    if clicking(1.0) <= clicks:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if clicking(mid) < clicks:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
