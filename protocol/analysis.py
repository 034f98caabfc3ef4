"""The figures a circuit declares (``analysis``), computed from its plan and its summed counts.

Pure: a `Plan` (which logical mode sits on which detector: `RegisterRead.columns`,
the delay lines' rounds: `Deadline.rounds`), the circuit and the counts per
result slot (`protocol.results.result_slot`, summed over frames) in, one
``{"figure", "value", "sigma", ...}`` per declared figure out. A register's
bits are its ``modes`` in order (first most significant), read on the placed
detectors ``columns``: detection efficiencies are those of the columns, never of
the logical modes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from .calibration_model import CalibrationData, predicted_visibility
from .circuit import (
    BeamSplitter,
    Circuit,
    Conditional,
    Fidelity,
    Figure,
    HomVisibility,
    Input,
    MziOp,
    PhaseShift,
    Transmission,
    UnitaryOp,
    expand_paths,
    flatten,
    gate_matrix,
    parse_ops,
)
from .plan import Phase, Plan, RegisterRead
from .results import joint_slot, result_slot


def figures(
    circuit: Circuit,
    plan: Plan,
    counts: Mapping[str, np.ndarray],
    efficiency: Sequence[float] | np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Every declared figure by its name (`Figure.label`).

    ``efficiency``: each physical mode's chance to detect a photon (a column
    ``c`` is mode ``c % plan.modes``); used by ``fidelity``, all ones if None.
    A figure whose register has no counts is left out.
    """
    out: dict[str, dict[str, Any]] = {}
    for figure in circuit.analysis:
        value = figure_value(figure, circuit, plan, counts, efficiency)
        if value is not None:
            out[figure.label()] = value
    return out


def figure_value(
    figure: Figure,
    circuit: Circuit,
    plan: Plan,
    counts: Mapping[str, np.ndarray],
    efficiency: Sequence[float] | np.ndarray | None = None,
) -> dict[str, Any] | None:
    """One figure, or None when its registers have no counts."""
    if isinstance(figure, Conditional):
        return conditional(plan, counts, figure.register, figure.given)
    found = register_counts(plan, counts, figure.register)
    if found is None:
        return None
    read, phase, measured = found
    if isinstance(figure, HomVisibility):
        ref = register_counts(plan, counts, figure.reference)
        if ref is None:
            return None
        return hom_visibility(float(measured[0b11]), float(ref[2][0b11]))
    if isinstance(figure, Fidelity):
        return fidelity(circuit, plan, phase, read, measured, efficiency)
    assert isinstance(figure, Transmission)
    return transmission(plan, figure.line, measured)


def register_counts(
    plan: Plan, counts: Mapping[str, np.ndarray], register: str
) -> tuple[RegisterRead, Phase, np.ndarray] | None:
    """The register's read, the (first) phase reading it, and its counts summed over every phase reading it."""
    found: tuple[RegisterRead, Phase] | None = None
    total: np.ndarray | None = None
    for phase in plan.phases:
        for read in phase.registers:
            if read.name != register:
                continue
            found = found or (read, phase)
            slot = counts.get(result_slot(phase.index, register))
            if slot is not None:
                total = np.asarray(slot) if total is None else total + np.asarray(slot)
    if found is None or total is None:
        return None
    return found[0], found[1], total


def hom_visibility(c_hom: float, c_ref: float) -> dict[str, Any] | None:
    """1 - 2 C(50:50) / C(no coupler), with its Poisson uncertainty."""
    if c_ref == 0:
        return None
    return {
        "figure": "hom_visibility",
        "value": 1 - 2 * c_hom / c_ref,
        "sigma": 2 * math.sqrt(c_hom + (c_hom / c_ref) ** 2 * c_ref + 1) / c_ref,
        "coincidences": int(c_hom),
        "reference_coincidences": int(c_ref),
        "note": "1 - 2 C(50:50) / C(no coupler): indistinguishable photons give 1, distinguishable 0",
    }


def calibration_predictions(
    circuit: Circuit,
    plan: Any,
    counts: dict[str, np.ndarray],
    found: dict[str, dict[str, Any]],
    version: int,
    data: CalibrationData,
) -> None:
    """Add to each HOM visibility what the calibration's measured sources predict (decision 0017 §5):
    ``calibrated`` and ``calibrated_sigma`` (M moved by its uncertainty), and the version.

    Sources whose M the calibration could tell only together (a lone pair) still predict their own
    pair, with that pair's measured spread; an M it could not tell at all predicts nothing."""
    sources = {f.mode: f for f in data.sources}
    for figure in circuit.analysis:
        result = found.get(figure.label())
        if result is None or not isinstance(figure, HomVisibility):
            continue
        located = register_counts(plan, counts, figure.register)
        if located is None:
            continue
        read, phase, _ = located
        columns = [c % plan.modes for c in read.columns][:2]
        fed = [i.mode for i in phase.inputs if i.state == "photon"][:2]
        if len(fed) < 2 or len(columns) < 2 or not all(j in sources for j in fed):
            continue
        a, b = fed
        pair = next((h for h in data.hom if set(h.modes) == {a, b} and h.visibility_sigma >= 0), None)
        alone = all(sources[j].indistinguishability_sigma >= 0 for j in fed)
        if not alone and pair is None:
            continue  # an M the calibration could not tell predicts nothing
        dark_per_shot = data.dark_counts_per_shot
        dark = (
            (dark_per_shot[columns[0]], dark_per_shot[columns[1]]) if len(dark_per_shot) == plan.modes else (0.0, 0.0)
        )
        value = predicted_visibility(sources, a, b, (columns[0], columns[1]), dark)
        result["calibrated"] = value
        result["calibration_version"] = version
        if not alone:  # measured only together: their product is known, the pair's own measurement its spread
            assert pair is not None
            result["calibrated_sigma"] = pair.visibility_sigma
            continue
        spread = []
        for sign in (-1.0, 1.0):
            moved = {
                j: msgspec.structs.replace(
                    f, indistinguishability=f.indistinguishability + sign * f.indistinguishability_sigma
                )
                for j, f in sources.items()
            }
            spread.append(predicted_visibility(moved, a, b, (columns[0], columns[1]), dark))
        result["calibrated_sigma"] = abs(spread[1] - spread[0]) / 2


def conditional(plan: Plan, counts: Mapping[str, np.ndarray], register: str, given: str) -> dict[str, Any] | None:
    """P(register is not 0 | given = u) for each u, from the joint counts of the phases reading both."""
    table: np.ndarray | None = None
    for phase in plan.phases:
        names = [r.name for r in phase.registers]
        joint = counts.get(joint_slot(phase.index))
        if register not in names or given not in names or joint is None:
            continue
        widths = [len(r.columns) for r in phase.registers]
        shaped = np.asarray(joint).reshape([2**w for w in widths])  # first register most significant
        axes = tuple(i for i, name in enumerate(names) if name not in (register, given))
        summed = shaped.sum(axis=axes) if axes else shaped
        if names.index(given) > names.index(register):
            summed = summed.T
        table = summed if table is None else table + summed  # [given, register]
    if table is None:
        return None
    shots = table.sum(axis=1)
    clicked = table[:, 1:].sum(axis=1)
    value = [float(c / n) if n else None for c, n in zip(clicked, shots, strict=True)]
    sigma = [math.sqrt(p * (1 - p) / n) if p is not None else None for p, n in zip(value, shots, strict=True)]
    return {
        "figure": "conditional",
        "value": value,
        "sigma": sigma,
        "shots": [int(n) for n in shots],
        "note": f"P({register} clicks | {given} = u) for u = 0 .. {len(value) - 1}",
    }


def transmission(plan: Plan, line: str, measured: np.ndarray) -> dict[str, Any] | None:
    """The share of shots the register clicked, with that line's rounds from the plan (`Deadline.rounds`)."""
    shots = int(measured.sum())
    if not shots:
        return None
    p = float(measured[1:].sum()) / shots
    deadline = next((d for phase in plan.phases for d in phase.deadlines if d.line == line), None)
    return {
        "figure": "transmission",
        "value": p,
        "sigma": math.sqrt(p * (1 - p) / shots),
        "rounds": deadline.rounds if deadline is not None else None,
        "physical_line": deadline.physical_line if deadline is not None else None,
    }


def fidelity(
    circuit: Circuit,
    plan: Plan,
    phase: Phase,
    read: RegisterRead,
    measured: np.ndarray,
    efficiency: Sequence[float] | np.ndarray | None,
) -> dict[str, Any] | None:
    """sum sqrt(p q) over the n-click patterns of the register (n: the round's photons).

    q: the ideal probability of one photon in each clicked mode (the permanent
    of the round's unitary, rows the clicked logical modes, columns the photons'
    input modes) times the efficiencies of the detectors that clicked
    (``read.columns``), both normalised over the n-click patterns.
    """
    unitary, photons = round_unitary(circuit, plan, phase.round)
    n = len(photons)
    bits = len(read.modes)
    eff = np.ones(plan.modes) if efficiency is None else np.asarray(efficiency, dtype=np.float64)
    q: dict[int, float] = {}
    for clicked in itertools.combinations(range(bits), n):
        rows = [read.modes[j] for j in clicked]
        amplitude = permanent(unitary[np.ix_(rows, photons)])
        pattern = sum(1 << (bits - 1 - j) for j in clicked)
        detect = float(np.prod([eff[read.columns[j] % plan.modes] for j in clicked]))
        q[pattern] = abs(amplitude) ** 2 * detect
    events = {v: int(measured[v]) for v in q}
    total_p, total_q = sum(events.values()), sum(q.values())
    if not total_p or not total_q:
        return None
    value = sum(math.sqrt(events[v] / total_p * q[v] / total_q) for v in q)
    covered = sum(q[v] / total_q for v in q if events[v])
    variance = max(0.0, covered - value**2) / (4 * total_p)  # multinomial, to first order
    return {
        "figure": "fidelity",
        "value": value,
        "sigma": math.sqrt(variance),
        "events": total_p,
        "photons": n,
        "note": f"sum sqrt(p q) over {n}-click patterns, q from the permanents and the placed detectors' efficiency",
    }


def round_unitary(circuit: Circuit, plan: Plan, round_: int) -> tuple[np.ndarray, list[int]]:
    """The round's gates as one unitary on the circuit's logical modes, and the modes a photon enters."""
    paths = {p for phase in plan.phases if phase.round == round_ for p in expand_paths(phase.ops)}
    ops, _ = parse_ops(circuit)
    u = np.eye(circuit.modes, dtype=np.complex128)
    photons: list[int] = []
    for path, op, _cond in flatten(ops):
        if str(path) not in paths:
            continue
        if isinstance(op, Input):
            if op.state == "photon":
                photons.append(op.mode)
        elif isinstance(op, PhaseShift | BeamSplitter | MziOp | UnitaryOp):
            modes = [op.mode] if isinstance(op, PhaseShift) else list(op.modes)
            g = np.eye(circuit.modes, dtype=np.complex128)
            g[np.ix_(modes, modes)] = gate_matrix(op)
            u = g @ u
    return u, sorted(photons)


def permanent(m: np.ndarray) -> complex:
    """Ryser's formula: fine for the few photons of a round (2^n terms)."""
    n = m.shape[0]
    if n == 0:
        return 1.0 + 0j
    total = 0j
    for k in range(1, n + 1):
        for cols in itertools.combinations(range(n), k):
            total += (-1) ** k * np.prod(m[:, list(cols)].sum(axis=1))
    return complex((-1) ** n * total)
