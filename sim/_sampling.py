"""Shots: photons through the mesh, through loss, into detectors.

Loss model (docs/simulator.md): every loss *before* the mesh is the same on all
inputs (source coupling) and the mesh is balanced (every path crosses one
MZI-equivalent per column), so that loss commutes with the mesh and is applied
to the photons where they leave it, together with the per-mode output coupling
and detector efficiency: each photon reaching detector j is counted with its
own probability (binomial thinning). This is exact, not an approximation.

Ideal photon patterns come from the exact distribution when the output space
is small enough, and from Clifford & Clifford's sampler (2018, Algorithm B)
when it is not. A second pass (delay lines and feed-forward) is computed
exactly from the state conditioned on the first pass's detections.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._boson import output_probabilities, permanent_amplitudes
from ._fock import state_count

EXACT_LIMIT = 1 << 21
"""Output spaces up to this many patterns are sampled from the exact distribution."""


@dataclass(frozen=True)
class Detection:
    """How photons leaving the mesh become detector readings.

    Attributes:
        survive: Per mode, the chance a photon leaving the mesh there is counted.
        dark: Per mode, mean dark counts per shot (rate x gate).
        kind: ``threshold`` (click or not) or ``pnr`` (photon numbers, up to 255).
        blind_shots: Shots a detector stays blind after a click (dead time
            longer than the shot period); 0 when the period is longer.
    """

    survive: np.ndarray
    dark: np.ndarray
    kind: str
    blind_shots: int = 0

    def apply(self, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        kept = rng.binomial(counts.astype(np.int64), self.survive)
        if self.dark.any():
            kept = kept + rng.poisson(self.dark, size=kept.shape)
        readings = (kept > 0).astype(np.uint8) if self.kind == "threshold" else np.minimum(kept, 255).astype(np.uint8)
        if self.blind_shots:
            readings = _dead_time(readings, self.blind_shots)
        return readings


def _dead_time(readings: np.ndarray, blind: int) -> np.ndarray:
    """``readings`` with every click within ``blind`` shots after a counted one in its column dropped.

    A click more than ``blind`` shots after the click before it is counted whatever came
    earlier: it starts a run. Within a run, a counted click's successor is the first click past
    its dead time (one vectorised search for all of them), taken for every run at once, step by
    step; the few long runs left are followed one click at a time.
    """
    out = readings.copy()
    for column in range(out.shape[1]):
        values = out[:, column]
        clicks = np.flatnonzero(values)
        if len(clicks) < 2:
            continue
        successor = np.searchsorted(clicks, clicks + blind, side="right")
        starts = np.flatnonzero(np.diff(clicks, prepend=clicks[0] - blind - 1) > blind)
        at, end = starts, np.append(starts[1:], len(clicks))  # each run's counted click, and its end
        counted = np.zeros(len(clicks), dtype=bool)
        while len(at) > 64:
            counted[at] = True
            after = successor[at]
            going = after < end
            at, end = after[going], end[going]
        if len(at):
            chain, following = [], successor.tolist()
            for click, stop in zip(at.tolist(), end.tolist(), strict=True):
                while click < stop:
                    chain.append(click)
                    click = following[click]
            counted[chain] = True
        values[clicks[~counted]] = 0
    return out


@dataclass(frozen=True)
class Histogram:
    """Shots as counts: each distinct reading once, and how many shots read it (decision 0017 §6).

    Attributes:
        patterns: (k, width) uint8, distinct rows in lexicographic order (the first column most
            significant), as ``np.unique(axis=0)`` would sort them.
        counts: (k,) int64, each at least 1.
    """

    patterns: np.ndarray
    counts: np.ndarray

    @property
    def shots(self) -> int:
        return int(self.counts.sum())

    @classmethod
    def drawn(cls, patterns: np.ndarray, counts: np.ndarray) -> Histogram:
        """Distinct ``patterns`` in any order and their ``counts``, put in order."""
        order = np.lexsort(patterns.T[::-1]) if patterns.size else np.arange(len(counts))
        return cls(np.ascontiguousarray(patterns[order], dtype=np.uint8), np.asarray(counts, dtype=np.int64)[order])

    @classmethod
    def of(cls, readings: np.ndarray) -> Histogram:
        """The histogram of (shots, width) readings.

        Each row becomes one integer (mixed radix, the first column most significant), so that
        counting is a bincount, or a sort of integers, instead of ``np.unique`` over rows (which
        sorts byte strings: 100x slower on 100,000 shots).
        """
        readings = np.asarray(readings, dtype=np.uint8)
        shots, width = readings.shape
        if shots == 0:
            return cls(readings, np.zeros(0, dtype=np.int64))
        if int(readings.max(initial=0)) <= 1:  # clicks (threshold detectors): one bit a column
            radix = [2] * width
        else:  # column by column: a strided max is 15x faster than max(axis=0) on tall arrays
            radix = [int(readings[:, column].max()) + 1 for column in range(width)]
        span = math.prod(radix)
        if span > 1 << 62:  # too wide for one integer: the rows themselves
            patterns, counts = np.unique(readings, axis=0, return_counts=True)
            return cls(patterns.astype(np.uint8), counts.astype(np.int64))
        keys: np.ndarray[Any, Any] = np.zeros(shots, dtype=np.int32 if span < 1 << 31 else np.int64)
        for column, base in enumerate(radix):
            if base > 1:
                keys *= base
                keys += readings[:, column]
        if span <= max(4 * shots, 1 << 16):
            tally = np.bincount(keys, minlength=span)
            distinct = np.flatnonzero(tally)
            counts = tally[distinct]
        else:
            distinct, counts = np.unique(keys, return_counts=True)
        return cls(_rows_of(distinct, radix), counts.astype(np.int64))

    def totals(self) -> np.ndarray:
        """Per column, the sum of every shot's value (``FETCh:COUNts?``)."""
        summed: np.ndarray = self.counts @ self.patterns.astype(np.int64)
        return summed

    def in_order(self, rng: np.random.Generator) -> np.ndarray:
        """Every shot's reading, (shots, width) uint8, in a random order: how exchangeable shots come."""
        rows = np.repeat(np.arange(len(self.counts)), self.counts)
        rng.shuffle(rows)
        shots: np.ndarray = self.patterns[rows]
        return shots


def _rows_of(keys: np.ndarray, radix: list[int]) -> np.ndarray:
    """The rows whose mixed-radix integers are ``keys`` (the inverse of `Histogram.of`'s encoding)."""
    rows = np.zeros((len(keys), len(radix)), dtype=np.uint8)
    rest = keys.copy()
    for column in range(len(radix) - 1, -1, -1):
        base = radix[column]
        if base > 1:
            rows[:, column] = rest % base
            rest //= base
    return rows


def sample_counts(probabilities: np.ndarray, shots: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``shots`` independent draws of an outcome, as (the outcomes drawn, how often each): a multinomial.

    The same distribution as counting ``_pick``'s draws, without drawing them one by one.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, None)
    if len(p) > 16 * shots:  # many more outcomes than shots: drawing the shots is cheaper
        outcomes, counts = np.unique(_pick(p, shots, rng), return_counts=True)
        return outcomes, counts.astype(np.int64)
    tally = rng.multinomial(shots, p / p.sum())
    outcomes = np.flatnonzero(tally)
    return outcomes, tally[outcomes].astype(np.int64)


def _pick(probabilities: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
    cumulative = np.cumsum(probabilities)
    draws = rng.random(shots) * cumulative[-1]
    picked: np.ndarray = np.searchsorted(cumulative, draws, side="right").clip(0, len(cumulative) - 1)
    return picked


def sample_ideal(unitary: np.ndarray, photons: Sequence[int], shots: int, rng: np.random.Generator) -> np.ndarray:
    """Photon numbers per output mode for ``shots`` shots, ideal and lossless: (shots, m) uint8."""
    m = len(photons)
    n = sum(photons)
    if n == 0:
        return np.zeros((shots, m), dtype=np.uint8)
    if state_count(m, n) <= EXACT_LIMIT:
        states, probabilities = output_probabilities(unitary, photons)
        picked: np.ndarray = states[_pick(probabilities, shots, rng)]
        return picked
    return clifford_clifford(unitary, photons, shots, rng)


def _glynn_minors(sub: np.ndarray) -> np.ndarray:
    """For (S, k-1, k) matrices, the permanents of the k minors dropping one column: (S, k)."""
    count, rows, cols = sub.shape
    if rows == 0:
        return np.ones((count, cols), dtype=np.complex128)
    # Glynn: Perm(M) = 2^{1-r} sum_{delta, delta_0 = 1} (prod delta) prod_j (sum_i delta_i M_ij)
    d = 1 << (rows - 1)
    signs = np.ones((d, rows))
    for bit in range(rows - 1):
        signs[(np.arange(d) >> bit) & 1 == 1, bit + 1] = -1
    weight = signs.prod(axis=1)
    sums = np.einsum("dr,srj->sdj", signs, sub)  # (S, d, k)
    prefix = np.ones((count, d, cols + 1), dtype=np.complex128)  # prefix[l] = prod_{j < l}
    suffix = np.ones((count, d, cols + 1), dtype=np.complex128)  # suffix[l] = prod_{j >= l}
    prefix[:, :, 1:] = np.cumprod(sums, axis=2)
    suffix[:, :, :cols] = np.cumprod(sums[:, :, ::-1], axis=2)[:, :, ::-1]
    excluding = prefix[:, :, :cols] * suffix[:, :, 1:]
    minors: np.ndarray = np.einsum("d,sdl->sl", weight, excluding) / d
    return minors


def clifford_clifford(unitary: np.ndarray, photons: Sequence[int], shots: int, rng: np.random.Generator) -> np.ndarray:
    """Exact boson sampling by Clifford & Clifford's Algorithm B, vectorised over shots.

    Each photon's output mode is drawn in turn from weights given by
    permanents of growing submatrices (Laplace-expanded, Glynn's formula for
    the minors), over a random order of the input columns: O(n^2 2^n + m n^2)
    per shot instead of the whole output space.
    """
    u = np.asarray(unitary, dtype=np.complex128)
    m = u.shape[0]
    columns = [mode for mode, count in enumerate(photons) for _ in range(count)]
    n = len(columns)
    a = u[:, columns]  # (m, n)
    result = np.zeros((shots, m), dtype=np.uint8)
    chunk = max(1, (1 << 21) // ((1 << max(n - 2, 0)) * n))
    for start in range(0, shots, chunk):
        size = min(chunk, shots - start)
        order = np.argsort(rng.random((size, n)), axis=1)
        ap = np.transpose(a[:, order], (1, 0, 2))  # (size, m, n): each shot's columns in its own order
        rows = np.zeros((size, 0), dtype=np.int64)
        for k in range(1, n + 1):
            sub = np.take_along_axis(ap[:, :, :k], rows[:, :, None], axis=1) if k > 1 else np.zeros((size, 0, 1))
            minors = _glynn_minors(sub.astype(np.complex128))  # (size, k)
            amplitudes = np.einsum("sil,sl->si", ap[:, :, :k], minors)
            weights = amplitudes.real**2 + amplitudes.imag**2
            cumulative = np.cumsum(weights, axis=1)
            draws = rng.random((size, 1)) * cumulative[:, -1:]
            chosen = (cumulative < draws).sum(axis=1).clip(0, m - 1)
            rows = np.concatenate([rows, chosen[:, None]], axis=1)
        for photon in range(n):
            np.add.at(result[start : start + size], (np.arange(size), rows[:, photon]), 1)
    return result


# --- the second pass: delay lines and feed-forward ----------------------------------------------


@dataclass(frozen=True)
class Stored:
    """A pass-1 output mode routed through a delay line back into the mesh.

    Attributes:
        out_mode: Where the photon leaves the first pass.
        in_mode: Where it re-enters for the second.
        transmission: Its chance to survive loss, delay line and re-coupling.
        feedforward: Whether it waits long enough for the feed-forward phases.
    """

    out_mode: int
    in_mode: int
    transmission: float
    feedforward: bool


@dataclass
class TwoPass:
    """A program with a second pass (docs/device-protocol.md, DLINe and FFORward)."""

    stored: list[Stored]
    ff_modes: list[int] = field(default_factory=list)
    rules: dict[str, dict[int, float]] = field(default_factory=dict)


def _by_key(states: np.ndarray, columns: list[int]) -> list[tuple[int, ...]]:
    return [tuple(row) for row in states[:, columns].tolist()]


class _TwoPassGroup:
    """Identical photons through a two-pass program: their first pass, and their stored photons' states.

    Distinguishable groups of photons (decision 0017) cross the mesh independently; only the
    detectors (which add their photon numbers) and the feed-forward (which reads all of the first
    pass's clicks) see them together.
    """

    def __init__(self, u: np.ndarray, photons: Sequence[int], program: TwoPass) -> None:
        m = u.shape[0]
        n = sum(photons)
        self.u, self.program = u, program
        stored_modes = [s.out_mode for s in program.stored]
        self.detected = [j for j in range(m) if j not in stored_modes]
        input_factorial = math.prod(math.factorial(p) for p in photons)
        states, coefficients = permanent_amplitudes(u, photons)
        factorials = np.array([math.factorial(k) for k in range(n + 1)], dtype=np.float64)
        self.amplitudes = coefficients / np.sqrt(factorials[states.astype(np.int64)].prod(axis=1) * input_factorial)
        self.d_keys = _by_key(states, self.detected)
        self.s_keys = _by_key(states, stored_modes)
        marginal: dict[tuple[int, ...], float] = defaultdict(float)
        for key, amp in zip(self.d_keys, self.amplitudes, strict=True):
            marginal[key] += abs(amp) ** 2
        self.d_outcomes = list(marginal)
        self.d_probabilities = np.array([marginal[k] for k in self.d_outcomes])
        self._mixtures: dict[int, Any] = {}

    def first(self, shots: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(picks, photon numbers on the first pass's detected modes, (shots, m))."""
        picks = _pick(self.d_probabilities, shots, rng)
        counts = np.zeros((shots, self.u.shape[0]), dtype=np.int64)
        if self.detected:
            counts[:, self.detected] = np.array(self.d_outcomes, dtype=np.int64)[picks]
        return picks, counts

    def second(
        self, picks: np.ndarray, ff_keys: np.ndarray, rng: np.random.Generator, out: np.ndarray, rows: np.ndarray
    ) -> None:
        """Add the second pass's photon numbers of the shots ``rows`` (their picks and feed-forward keys) to ``out``."""
        program = self.program
        for pick in np.unique(picks).tolist():
            in_pick = np.flatnonzero(picks == pick)
            if pick not in self._mixtures:
                self._mixtures[pick] = _stored_mixture(
                    self.d_outcomes[pick], self.d_keys, self.s_keys, self.amplitudes, program.stored
                )
            _patterns, probabilities, states_after = self._mixtures[pick]
            lost = _pick(probabilities, len(in_pick), rng)
            for branch in np.unique(lost).tolist():
                in_branch = in_pick[lost == branch]
                for key in np.unique(ff_keys[in_branch]).tolist():
                    members = in_branch[ff_keys[in_branch] == key]
                    bits = format(key, f"0{len(program.ff_modes)}b") if program.rules else ""
                    phases = program.rules.get(bits, {})
                    probabilities2, outputs2 = _second_pass(self.u, states_after[branch], program.stored, phases)
                    out[rows[members]] += outputs2[_pick(probabilities2, len(members), rng)]


def sample_two_pass(
    unitary: np.ndarray,
    photons: Sequence[int] | Sequence[Sequence[Sequence[int]]],
    program: TwoPass,
    first: Detection,
    second: Detection,
    shots: int,
    rng: np.random.Generator,
    configuration: np.ndarray | None = None,
) -> np.ndarray:
    """(shots, 2m) readings: first-pass detections (stored modes read 0), then the second pass.

    Exact: the first pass's photon numbers on detected modes are drawn from
    their marginal; the stored photons carry the conditioned state, lose
    photons in the delay lines (a mixture, drawn per shot), take the
    feed-forward phases chosen by the first pass's clicks, and cross the mesh
    again.

    ``photons`` is one input occupation (identical photons), or, with ``configuration`` (each
    shot's index into it), a list of configurations, each a list of occupations that are
    distinguishable from one another (decision 0017: imperfect sources).
    """
    u = np.asarray(unitary, dtype=np.complex128)
    m = u.shape[0]
    if configuration is None:
        configurations: list[list[tuple[int, ...]]] = [[tuple(int(p) for p in photons)]]  # type: ignore[arg-type]
        configuration = np.zeros(shots, dtype=np.int64)
    else:
        configurations = [[tuple(group) for group in config] for config in photons]  # type: ignore[union-attr]
    stored_modes = [s.out_mode for s in program.stored]
    groups: dict[tuple[int, ...], _TwoPassGroup] = {}
    counts1 = np.zeros((shots, m), dtype=np.int64)
    drawn: list[tuple[_TwoPassGroup, np.ndarray, np.ndarray]] = []  # (group, its shots, their picks)
    for index, config in enumerate(configurations):
        rows = np.flatnonzero(configuration == index)
        for occupation in config:
            if not any(occupation) or not len(rows):
                continue
            group = groups.get(occupation) or groups.setdefault(occupation, _TwoPassGroup(u, occupation, program))
            picks, counts = group.first(len(rows), rng)
            counts1[rows] += counts
            drawn.append((group, rows, picks))
    readings1 = first.apply(np.minimum(counts1, 255).astype(np.uint8), rng)
    readings1[:, stored_modes] = 0
    clicks = (readings1[:, program.ff_modes] > 0).astype(np.int64)
    ff_keys = clicks @ (1 << np.arange(len(program.ff_modes))[::-1]) if program.rules else np.zeros(shots, np.int64)
    counts2 = np.zeros((shots, m), dtype=np.int64)
    for group, rows, picks in drawn:
        group.second(picks, ff_keys[rows], rng, counts2, rows)
    readings2 = second.apply(np.minimum(counts2, 255).astype(np.uint8), rng)
    return np.concatenate([readings1, readings2], axis=1)


def _stored_mixture(
    d_outcome: tuple[int, ...],
    d_keys: list[tuple[int, ...]],
    s_keys: list[tuple[int, ...]],
    amplitudes: np.ndarray,
    stored: list[Stored],
) -> tuple[list[tuple[int, ...]], np.ndarray, list[dict[tuple[int, ...], complex]]]:
    """The stored photons' state given the first-pass outcome, after delay-line loss.

    Returns the possible patterns of lost photons, their probabilities, and for
    each the (normalised) state of the surviving photons over stored-mode patterns.
    """
    conditional = {s: complex(a) for d, s, a in zip(d_keys, s_keys, amplitudes, strict=True) if d == d_outcome}
    norm = math.sqrt(sum(abs(a) ** 2 for a in conditional.values()))
    branches: dict[tuple[int, ...], dict[tuple[int, ...], complex]] = defaultdict(lambda: defaultdict(complex))
    for pattern, amp in conditional.items():
        for lost in np.ndindex(*(k + 1 for k in pattern)):
            factor = 1.0
            for k, gone, route in zip(pattern, lost, stored, strict=True):
                t = route.transmission
                factor *= math.comb(k, gone) * t ** (k - gone) * (1 - t) ** gone
            if factor > 0:
                kept = tuple(k - gone for k, gone in zip(pattern, lost, strict=True))
                branches[tuple(lost)][kept] += amp / norm * math.sqrt(factor)
    patterns = list(branches)
    probabilities = np.array([sum(abs(a) ** 2 for a in branches[p].values()) for p in patterns])
    states = []
    for p, probability in zip(patterns, probabilities, strict=True):
        scale = 1 / math.sqrt(probability) if probability > 0 else 0.0
        states.append({k: a * scale for k, a in branches[p].items()})
    return patterns, probabilities, states


def _second_pass(
    u: np.ndarray, state: dict[tuple[int, ...], complex], stored: list[Stored], phases: dict[int, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Output distribution of the stored photons' state sent through the mesh again."""
    m = u.shape[0]
    total: np.ndarray | None = None
    outputs: np.ndarray = np.zeros((0, m), dtype=np.uint8)
    for pattern, amp in state.items():
        if amp == 0:
            continue
        occupation = [0] * m
        phase = 0.0
        for k, route in zip(pattern, stored, strict=True):
            occupation[route.in_mode] += k
            if route.feedforward:
                phase += k * phases.get(route.in_mode, 0.0)
        outputs, coefficients = permanent_amplitudes(u, occupation)
        norm = math.sqrt(math.prod(math.factorial(x) for x in occupation))
        contribution = amp * complex(math.cos(phase), math.sin(phase)) * coefficients / norm
        total = contribution if total is None else total + contribution
    if total is None:
        return np.ones(1), np.zeros((1, m), dtype=np.uint8)
    factorials = np.array([math.factorial(k) for k in range(int(outputs.max(initial=0)) + 1)], dtype=np.float64)
    probabilities = (total.real**2 + total.imag**2) / factorials[outputs.astype(np.int64)].prod(axis=1)
    return probabilities, outputs
