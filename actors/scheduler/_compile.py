"""From a circuit to an execution plan: validate against the device, place, decompose, schedule.

One pass over the operations (O(V + E)) does the bookkeeping a shot of the
device imposes (docs/circuits.md, "How a circuit runs"):

* A *round* is one shot structure: inputs, a first pass through the mesh,
  stored photons waiting in delay lines, a second pass with the loaded
  photons, detection. A new round starts when a mode that was measured gets
  a new input.
* Within a round, operations that share modes, delay lines or registers form
  *components*. A component must fit the device in one shot; components
  that do not fit together are serialised into separate *phases*.
* A phase's unitary is the first pass's operations on its first-pass modes
  and the second pass's on its second-pass modes, placed on disjoint physical
  modes (block diagonal), decomposed on the smallest top corner of the mesh
  that holds them (`protocol.mesh.embed_phases`).

Every problem is collected with its op's index path; nothing is planned
unless there are none.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from protocol.circuit import (
    BeamSplitter,
    Circuit,
    CircuitError,
    CircuitProblem,
    If,
    Input,
    Load,
    Measure,
    MziOp,
    Op,
    PhaseShift,
    ProblemList,
    Store,
    UnitaryOp,
    Wait,
    circuit_hash,
    compress_paths,
    flatten,
    number_text,
    parse_ops,
)
from protocol.hal import MAX_RULES, DelayRoute, InputSetting
from protocol.mesh import clements_many, embed_phases, mzi
from protocol.photonica import DeviceDescription
from protocol.plan import (
    MAX_PHASES,
    MAX_PLAN_OPS,
    Branch,
    Deadline,
    Phase,
    Placement,
    Plan,
    PlanMetrics,
    RegisterRead,
    Resources,
)

UNITARY_TOLERANCE = 1e-8


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Configured limits on what the scheduler accepts (``[limits]`` of its configuration).

    Each size a client chooses has one, checked before anything in proportion
    to it is allocated (docs/circuits.md, "Limits", says why each is what it is).

    Attributes:
        max_ops: Operations in one circuit, conditionals' bodies included.
        max_modes: Logical modes a circuit may declare (per-mode state is kept for each).
        max_shots: Shots of one job.
        max_ff_bits: Register bits the feed-forward of one phase may read (2**bits branches are planned).
        max_register_bits: Modes one measurement reads into a register (its histogram has 2**bits bins).
        max_result_bins: Histogram bins of all of a circuit's registers together (8 bytes each, per phase).
        max_phases: Phases of one plan (each carries the mesh's m² heater phases); also bounds rounds.
        max_branches: Feed-forward branches of one plan, all phases together.
        max_wait_ns: Nanoseconds one wait may stand for.
        max_name_chars: Characters of a circuit's name.
        max_problems: Problems listed when a circuit is refused (the rest are counted).
        coherence_margin: Fraction of a delay line's window kept unused as a safety margin.
        readout_s_per_shot: Time to fetch one shot's pattern, for duration estimates.
        settle_factor: Heater settling waited, in time constants (5: within 1 %).
    """

    max_ops: int = 1_000_000
    max_modes: int = 1024
    max_shots: int = 100_000_000
    max_ff_bits: int = 10
    max_register_bits: int = 20
    max_result_bins: int = 2**22
    max_phases: int = 1024
    max_branches: int = 2**16
    max_wait_ns: float = 1e9
    max_name_chars: int = 256
    max_problems: int = 100
    coherence_margin: float = 0.1
    readout_s_per_shot: float = 2e-7
    settle_factor: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.coherence_margin < 1:
            raise ValueError(f"limits.coherence_margin must be in [0, 1), got {self.coherence_margin}")
        for name in Limits.__struct_fields__:
            if name.startswith("max_") and not getattr(self, name) >= 1:
                raise ValueError(f"limits.{name} must be at least 1, got {getattr(self, name)}")
        # A plan the protocol would refuse to carry must be refused as a circuit instead.
        for name, value, most, what in (
            ("max_ff_bits", 2**self.max_ff_bits, MAX_RULES, "feed-forward branches in a phase"),
            ("max_phases", self.max_phases, MAX_PHASES, "phases in a plan"),
            ("max_ops", self.max_ops, MAX_PLAN_OPS, "operations in a phase"),
        ):
            if value > most:
                raise ValueError(f"limits.{name} allows plans the protocol cannot carry: at most {most:,} {what}")


@dataclass(frozen=True)
class Health:
    """Components calibration or the executor found degraded: the compiler places nothing on them."""

    modes: frozenset[int] = frozenset()
    detectors: frozenset[int] = frozenset()
    delay_lines: frozenset[int] = frozenset()

    def key(self) -> str:
        return f"m{sorted(self.modes)}d{sorted(self.detectors)}l{sorted(self.delay_lines)}"


# --- the pass over the operations ----------------------------------------------------------------


@dataclass
class _Register:
    name: str
    round: int
    pass_: int
    modes: list[int]
    path: str | int


@dataclass
class _Held:
    line: str
    mode: int
    path: str | int
    at_ns: float
    index: int


@dataclass
class _Loaded:
    mode: int
    line: str
    store_path: str | int
    load_path: str | int
    stored_ns: float
    rounds: int
    from_mode: int


@dataclass
class Component:
    """Operations of one round that must share a shot."""

    round: int
    first_op: int
    ops: list[str | int] = field(default_factory=list)
    pass1: list[int] = field(default_factory=list)
    pass2: list[int] = field(default_factory=list)
    measured: set[tuple[int, int]] = field(default_factory=set)
    """(pass, logical mode) of every detection."""
    inputs: dict[int, Input] = field(default_factory=dict)
    seen1: set[int] = field(default_factory=set)
    seen2: set[int] = field(default_factory=set)
    gates: list[tuple[int, Any, Op]] = field(default_factory=list)
    """(pass, logical modes, gate op) in order."""
    loads: dict[int, _Loaded] = field(default_factory=dict)
    """Second-pass mode -> what was loaded into it."""
    registers: list[_Register] = field(default_factory=list)
    conditions: list[tuple[str, int, int, float]] = field(default_factory=list)
    """(register, value, second-pass mode, phase)."""
    added: list[tuple[str | int, str]] = field(default_factory=list)
    """(op path, key) of the op that brought each of its modes in, pass by pass, in circuit order."""
    detected_at: list[str | int] = field(default_factory=list)
    """The measurement of each detection, in circuit order."""
    condition_paths: list[str | int] = field(default_factory=list)
    """The conditional phase shift of each condition."""

    @property
    def ff_modes(self) -> list[int]:
        return sorted({mode for _, _, mode, _ in self.conditions})

    @functools.cached_property
    def ff_bits(self) -> int:
        """Register bits its feed-forward reads: its phase plans 2^bits branches (with its neighbours')."""
        read = {register for register, *_ in self.conditions}
        return sum(len(r.modes) for r in self.registers if r.name in read)


@dataclass
class Analysis:
    ops: list[Op | None]
    problems: list[CircuitProblem]
    components: list[Component]
    rounds: int
    edges: int
    predecessors: list[list[int]]
    """Op-level dependency graph (flattened op order): each op's predecessors."""
    slack_ns: float | None = None
    """Least slack before a stored photon's deadline, propagated backwards through the graph."""
    builds: list[_PhaseBuild] | None = None
    """The components packed into phases (the plan's phases, once built)."""


class _Find:
    """Union-find over small integer keys, with path halving."""

    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        parent = self.parent
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


_KIND_PS, _KIND_BS, _KIND_MZI = 0, 1, 2


def _compose(blocks: list[tuple[list[int], list[tuple[int, Any, Op]], int]]) -> list[np.ndarray]:
    """Each block's unitary, the blocks of one size at a time (`_compose_alike`).

    One array for all blocks would be padded to the widest: thousands of
    one-mode blocks beside one of 32 modes would take blocks x 33 x 32 complex
    numbers. By size, the arrays hold what the blocks need, (k + 1) x k each.
    """
    by_size: dict[int, list[int]] = {}
    for b, (modes, _, _) in enumerate(blocks):
        by_size.setdefault(len(modes), []).append(b)
    results: list[np.ndarray] = [np.empty(0)] * len(blocks)
    for members in by_size.values():
        for b, u in zip(members, _compose_alike([blocks[b] for b in members]), strict=True):
            results[b] = u
    return results


def _compose_alike(blocks: list[tuple[list[int], list[tuple[int, Any, Op]], int]]) -> list[np.ndarray]:
    """Each block's unitary (its pass's gates on its logical modes, in order: U <- G U), all at once.

    A block is (logical modes, gates, pass). Every gate gets a depth (one more
    than the last gate on either of its modes); gates of equal depth act on
    different rows, so all blocks' gates of one depth are applied together in
    a few numpy calls. Work in Python is a few list appends per gate; the
    arithmetic is vectorised over blocks and over the gates of a layer.
    """
    if not blocks:
        return []
    kmax = max(len(modes) for modes, _, _ in blocks)
    dummy = kmax  # a spare row: a phase shift is a 2-row update whose second row stays zero
    u = np.zeros((len(blocks), kmax + 1, kmax), dtype=np.complex128)
    blk: list[int] = []
    rows_a: list[int] = []
    rows_b: list[int] = []
    kinds: list[int] = []
    thetas: list[float] = []
    phis: list[float] = []
    depths: list[int] = []
    general: dict[int, list[tuple[int, Any, Op]]] = {}
    for b, (modes, gates, stage) in enumerate(blocks):
        k = len(modes)
        u[b, np.arange(k), np.arange(k)] = 1.0
        if any(type(op) is UnitaryOp for s_, _, op in gates if s_ == stage):
            general[b] = gates
            continue
        at = {q: i for i, q in enumerate(modes)}
        depth = [0] * (k + 1)
        for gate_stage, gate_modes, op in gates:
            if gate_stage != stage:
                continue
            kind = type(op)
            i = at[gate_modes[0]]
            if kind is PhaseShift:
                d = depth[i] + 1
                depth[i] = d
                rows_b.append(dummy)
                kinds.append(_KIND_PS)
                thetas.append(0.0)
            else:
                j = at[gate_modes[1]]
                d = max(depth[i], depth[j]) + 1
                depth[i] = depth[j] = d
                rows_b.append(j)
                kinds.append(_KIND_BS if kind is BeamSplitter else _KIND_MZI)
                thetas.append(op.theta)  # type: ignore[union-attr]
            blk.append(b)
            rows_a.append(i)
            phis.append(op.phi)  # type: ignore[union-attr]
            depths.append(d)
    if blk:
        kind_a = np.array(kinds)
        theta = np.array(thetas)
        e = np.exp(1j * np.array(phis))
        m00 = np.empty(len(kind_a), dtype=np.complex128)
        m01, m10, m11 = np.empty_like(m00), np.empty_like(m00), np.empty_like(m00)
        ps, bs, mz = kind_a == _KIND_PS, kind_a == _KIND_BS, kind_a == _KIND_MZI
        m00[ps], m01[ps], m10[ps], m11[ps] = e[ps], 0, 0, 1
        c, s = np.cos(theta[bs]), np.sin(theta[bs])
        m00[bs], m01[bs], m10[bs], m11[bs] = c, 1j * s / e[bs], 1j * s * e[bs], c
        half = theta[mz] / 2
        g = 1j * np.exp(1j * half)
        sh, ch = np.sin(half), np.cos(half)
        m00[mz], m01[mz], m10[mz], m11[mz] = g * e[mz] * sh, g * ch, g * e[mz] * ch, -g * sh
        depth_a = np.array(depths)
        order = np.argsort(depth_a, kind="stable")
        cuts = np.flatnonzero(np.diff(depth_a[order])) + 1
        blk_a, ra_a, rb_a = np.array(blk), np.array(rows_a), np.array(rows_b)
        for layer in np.split(order, cuts):
            bl, a, b_ = blk_a[layer], ra_a[layer], rb_a[layer]
            top, bottom = u[bl, a], u[bl, b_]
            u[bl, a] = m00[layer, None] * top + m01[layer, None] * bottom
            u[bl, b_] = m10[layer, None] * top + m11[layer, None] * bottom
    results = []
    for b, (modes, gates, stage) in enumerate(blocks):
        k = len(modes)
        if b in general:
            results.append(_compose_general(gates, stage, modes))
        else:
            results.append(u[b, :k, :k].copy())
    return results


def _compose_general(gates: list[tuple[int, Any, Op]], stage: int, modes: list[int]) -> np.ndarray:
    """One block with arbitrary unitaries among its gates, gate by gate."""
    at = {q: i for i, q in enumerate(modes)}
    u = np.eye(len(modes), dtype=np.complex128)
    for gate_stage, gate_modes, op in gates:
        if gate_stage == stage:
            index = [at[q] for q in gate_modes]
            u[index, :] = _gate(op) @ u[index, :]
    return u


_MODE_STATES = {
    "fresh": "nothing has happened to it in this round: vacuum, free for an input or a load",
    "p1": "carries first-pass light (an input, or vacuum a first-pass gate met)",
    "gone": "empty: its photon went into a delay line (stored; loaded back or not, it is elsewhere)",
    "measured": "detected in the first pass; free for a load, or as vacuum a loaded photon meets",
    "p2": "carries second-pass light (a loaded photon, or vacuum a second-pass gate met)",
    "done": "detected in the second pass: the round is over for it",
}
"""What a mode holds within a round; ``analyse`` moves each mode through these by its own ops only."""

_CLOSED_ALWAYS = {
    "done": "was measured in the second pass: this shot is over for it; a new input starts the next",
}
_CLOSED_IN_FIRST_PASS = {
    **_CLOSED_ALWAYS,
    "gone": "is empty: its photon went into a delay line; the first pass is over for it",
    "measured": "was measured; after a measurement a mode is used again only by a new input (a new shot) or as "
    "vacuum in the second pass",
}
"""Why a gate cannot act on a mode in a state: in any pass, and in the first pass."""


def _gate(op: Op) -> np.ndarray:
    if isinstance(op, PhaseShift):
        return np.array([[complex(math.cos(op.phi), math.sin(op.phi))]])
    if isinstance(op, BeamSplitter):
        c, s = math.cos(op.theta), math.sin(op.theta)
        e = complex(math.cos(op.phi), math.sin(op.phi))
        return np.array([[c, 1j * s / e], [1j * s * e, c]])
    if isinstance(op, MziOp):
        return mzi(op.theta, op.phi)
    assert isinstance(op, UnitaryOp)
    return op.matrix()


def _modes_key(op: Op) -> str:
    """The key an op names its modes by: ``mode`` or ``modes``, whatever their number."""
    return "mode" if isinstance(op, Input | PhaseShift | Store | Load) else "modes"


def _enclosing(path: str | int) -> str:
    """The path of the conditional a path inside it belongs to (``"7.ops.0"`` -> ``"7"``)."""
    return str(path).rsplit(".ops.", 1)[0]


def _modes_of(op: Op) -> list[int]:
    if isinstance(op, Input | PhaseShift | Store | Load):
        return [op.mode]
    if isinstance(op, BeamSplitter | MziOp):
        return list(op.modes)
    if isinstance(op, UnitaryOp | Measure):
        return list(op.modes)
    return []


def _count_ops(raw: list[Any]) -> int:
    """Ops as sent, conditionals' bodies included, counted without building anything.

    One level of bodies: a conditional inside a conditional is refused unread.
    """
    count = len(raw)
    for op in raw:
        if type(op) is dict and type(op.get("op")) is str and op["op"] == "if":
            body = op.get("ops")
            if type(body) is list:
                count += len(body)
    return count


def _few(items: Any, at_most: int = 8) -> str:
    """A client's list in a message: its first few, and how many more."""
    shown = sorted(items)[:at_most] if not isinstance(items, list) else items[:at_most]
    more = len(items) - len(shown)
    return f"{shown}" if not more else f"{str(shown)[:-1]}, ... ({more} more)]"


def _matrix_problem(op: UnitaryOp, device_modes: int) -> tuple[str, str] | None:
    """What is wrong with a unitary's size, checked on the lists before any array is made.

    Its numbers are finite already (`protocol.circuit.Finite`, checked as it was read).
    """
    k = len(op.modes)
    if k > device_modes:
        return "modes", f"a unitary on {k} modes: the device has {device_modes}, so no shot can hold it"
    for key, rows in (("re", op.re), ("im", op.im)):
        if key == "im" and not rows:
            continue
        if len(rows) != k or any(len(row) != k for row in rows):
            lengths = _few(sorted({len(row) for row in rows}))
            return key, f"the matrix must be {k}x{k} for {k} modes; `{key}` has {len(rows)} rows of {lengths} entries"
    return None


def analyse(circuit: Circuit, device: DeviceDescription, limits: Limits, health: Health = Health()) -> Analysis:
    """Check the circuit against the device and limits; group its operations into components.

    Every size the client chose is checked before anything in proportion to
    it is built: the modes and the number of ops first (per-mode state and the
    typed ops come after), each op's own sizes before its matrix, histogram or
    round is made (docs/circuits.md, "Limits").
    """
    problems = ProblemList(limits.max_problems)

    def problem(path: str | int | None, field_: str | None, message: str) -> None:
        problems.append(CircuitProblem(op=None if path is None else str(path), field=field_, message=message))

    if circuit.modes > limits.max_modes:
        problem(
            None, "modes", f"{number_text(circuit.modes)} modes is more than the configured limit of {limits.max_modes}"
        )
    if circuit.shots > limits.max_shots:
        problem(
            None, "shots", f"{number_text(circuit.shots)} shots is more than the configured limit of {limits.max_shots}"
        )
    if len(circuit.name) > limits.max_name_chars:
        problem(None, "name", f"the name has {len(circuit.name):,} characters; the limit is {limits.max_name_chars}")
    count = _count_ops(circuit.ops)
    if count > limits.max_ops:
        problem(
            None,
            "ops",
            f"{count:,} operations (conditionals' bodies included) is more than the configured limit of "
            f"{limits.max_ops:,}",
        )
    if circuit.modes > limits.max_modes or count > limits.max_ops:
        return Analysis([], problems.report(), [], 0, 0, [])
    ops, _ = parse_ops(circuit, problems)
    flat = flatten(ops)

    loop_ns = device.delay_lines.loop_s * 1e9
    window_ns = device.delay_lines.max_rounds * loop_ns
    limit_ns = window_ns * (1 - limits.coherence_margin)
    ff_latency_ns = device.feedforward.latency_s * 1e9

    # Each mode's state within the current round (`_MODE_STATES`). Where a stored photon is, is the
    # business of ``held`` (delay line -> where it came from) alone: a store empties its mode, a load fills
    # the mode it names, and neither touches any other mode.
    state: list[str] = ["fresh"] * circuit.modes
    touched2: list[bool] = [False] * circuit.modes
    loaded: dict[int, _Loaded] = {}
    held: dict[str, _Held] = {}
    registers: dict[str, _Register] = {}
    in_flight: set[int] = set()  # the modes in p1 or p2, kept as they change: no scan of every mode per op
    result_bins = 0  # histogram bins of the registers measured so far (2^bits each)
    round_index = 0
    clock = 0.0
    last_wait: int | None = None  # the graph's clock: the last wait, and the stores and loads since it
    since_wait: list[int] = []
    find = _Find()
    # Dependency graph: the last op that touched each mode / delay line / register.
    last_on: dict[Any, int] = {}
    predecessors: list[list[int]] = []
    edges = 0
    # What each op contributes to its component, applied once components are known.
    contributions: list[tuple[int, Any, str | int, Any, int]] = []  # (round, key, path, op, pass)
    load_limits: dict[int, tuple[int, float]] = {}  # load index -> (its store's index, window less margin)

    def depend(index: int, keys: Sequence[Any]) -> None:
        nonlocal edges
        preds = []
        for key in keys:
            before = last_on.get(key)
            if before is not None and before not in preds:
                preds.append(before)
            last_on[key] = index
        edges += len(preds)
        predecessors.append(preds)

    def start_round() -> None:  # O(modes), at most max_phases times (checked before)
        nonlocal round_index, clock, last_wait
        round_index += 1
        clock = 0.0
        for q in range(circuit.modes):
            state[q] = "fresh"
            touched2[q] = False
        loaded.clear()
        in_flight.clear()
        last_wait = None
        since_wait.clear()

    def read_clock(index: int) -> None:
        """A store or load happens at a time: after the last wait, before the next."""
        nonlocal edges
        if last_wait is not None and last_wait not in predecessors[index]:
            predecessors[index].append(last_wait)
            edges += 1
        since_wait.append(index)

    n_modes = circuit.modes
    pairs: set[tuple[int, int]] = set()  # modes a gate joins: unions done once per distinct pair, after the pass
    clock_at: list[float] = []  # each op's time within its shot (waits are the only ops that take time)
    for index, (path, op, cond) in enumerate(flat):
        clock_at.append(clock)
        # Fast path: a gate on photons already in flight in one pass (most of any long circuit).
        kind = type(op)
        if cond is None and (kind is BeamSplitter or kind is MziOp or kind is PhaseShift):
            if kind is PhaseShift:
                a = op.mode  # type: ignore[union-attr]
                if a < n_modes and (state[a] == "p1" or state[a] == "p2"):
                    before = last_on.get(a)
                    last_on[a] = index
                    predecessors.append([] if before is None else [before])
                    edges += before is not None
                    stage = 1 if state[a] == "p1" else 2
                    if stage == 2:
                        touched2[a] = True
                    contributions.append((round_index, round_index * n_modes + a, path, op, stage))
                    continue
            else:
                a, b = op.modes  # type: ignore[union-attr]
                if a != b and a < n_modes and b < n_modes:
                    sa = state[a]
                    if sa == state[b] and (sa == "p1" or sa == "p2"):
                        pa, pb = last_on.get(a), last_on.get(b)
                        if pa is None:
                            preds = [] if pb is None else [pb]
                        else:
                            preds = [pa] if pb is None or pb == pa else [pa, pb]
                        last_on[a] = last_on[b] = index
                        predecessors.append(preds)
                        edges += len(preds)
                        if sa == "p1":
                            stage = 1
                        else:
                            stage = 2
                            touched2[a] = touched2[b] = True
                        key = round_index * n_modes + a
                        pairs.add((key, key - a + b))
                        contributions.append((round_index, key, path, op, stage))
                        continue
        modes = _modes_of(op)
        bad = [q for q in modes if q >= circuit.modes]
        keys: list[Any] = list(modes)
        if isinstance(op, Store | Load):
            keys.append(("line", op.line))
        if isinstance(op, Measure):
            keys.append(("r", op.into))
        if isinstance(op, If):
            keys.append(("r", op.register))
        if cond is not None:
            keys.append(("r", cond.register))
        depend(index, keys)
        if isinstance(op, Wait):  # time passes for what was stored: after the last wait and what came since
            preds = predecessors[index]
            for p in ([] if last_wait is None else [last_wait]) + since_wait:
                if p not in preds:
                    preds.append(p)
                    edges += 1
            last_wait = index
            since_wait.clear()
        elif isinstance(op, Store | Load):
            read_clock(index)
        if isinstance(op, UnitaryOp | Measure) and not 0 < len(modes) <= circuit.modes:
            problem(
                path,
                "modes",
                f"lists {len(modes)} modes: an operation acts on at least one mode, and on at most the "
                f"{circuit.modes} modes the circuit declares",
            )
            continue
        if bad:
            problem(
                path,
                _modes_key(op),
                f"mode {number_text(bad[0])} is out of range: the circuit declares {circuit.modes} modes "
                f"(0-{circuit.modes - 1})",
            )
            continue
        if len(set(modes)) != len(modes):
            problem(path, "modes", f"the modes {_few(modes)} repeat: an operation acts on distinct modes")
            continue
        if cond is not None and not isinstance(op, PhaseShift):
            problem(
                path,
                "op",
                f"a conditional block may hold only phase shifts (ps): the device's feed-forward "
                f"sets fast phase shifters; {type(op).__name__} is not one",
            )
            continue

        if isinstance(op, Input):
            if state[op.mode] != "fresh":
                if held or in_flight:
                    what = (
                        f"delay lines {_few(held)} hold photons"
                        if held
                        else f"modes {_few(in_flight)} are still in flight"
                    )
                    problem(
                        path,
                        "mode",
                        f"mode {op.mode} gets a new input while {what}: a new shot starts only "
                        "when the previous one is fully measured",
                    )
                    continue
                if round_index + 1 >= limits.max_phases:
                    problem(
                        path,
                        "mode",
                        f"op {path} starts round {round_index + 2}: every round runs in a phase of its own at "
                        f"least, and the configured limit is {limits.max_phases} phases (submit the rest as "
                        "another job); the ops from here on are not checked",
                    )
                    held.clear()  # what the unchecked ops would have loaded is not reported as never loaded
                    break
                start_round()
            if op.state == "coherent" and op.power_w > device.sources.coherent_max_w:
                problem(
                    path,
                    "power_w",
                    f"{op.power_w} W of coherent light is more than the device's {device.sources.coherent_max_w} W",
                )
            if op.state == "photon" and not device.sources.single_photon:
                problem(path, "state", "the device has no single-photon sources")
            state[op.mode] = "p1"
            in_flight.add(op.mode)
            contributions.append((round_index, (round_index * n_modes + op.mode), path, op, 1))
            continue

        if isinstance(op, Wait):  # never conditional: a conditional block holds phase shifts only (above)
            if op.ns > limits.max_wait_ns:
                problem(
                    path,
                    "ns",
                    f"a wait of {op.ns:g} ns is more than the configured limit of {limits.max_wait_ns:g} ns "
                    f"(a delay line keeps a photon {window_ns:g} ns)",
                )
                continue
            clock += op.ns
            continue

        if isinstance(op, If):
            reg = registers.get(op.register)
            if reg is None:
                problem(
                    path,
                    "register",
                    f"register {op.register!r} is read before it is written (no measure "
                    f"into {op.register!r} comes earlier)",
                )
            elif reg.round != round_index:
                problem(
                    path,
                    "register",
                    f"register {op.register!r} was measured in an earlier shot (op {reg.path}); "
                    "feed-forward acts within the shot that measured it",
                )
            elif reg.pass_ != 1:
                problem(
                    path,
                    "register",
                    f"register {op.register!r} is measured in the second pass (op {reg.path}); "
                    "the device's feed-forward reads first-pass detections only",
                )
            elif op.equals >= 2 ** len(reg.modes):
                problem(
                    path,
                    "equals",
                    f"register {op.register!r} has {len(reg.modes)} bits; it never reads {number_text(op.equals)}",
                )
            continue

        if isinstance(op, PhaseShift | BeamSplitter | MziOp | UnitaryOp):
            if isinstance(op, UnitaryOp):
                wrong = _matrix_problem(op, device.modes)
                if wrong is not None:
                    problem(path, *wrong)
                    continue
                matrix = op.matrix()
                error = float(np.abs(matrix.conj().T @ matrix - np.eye(len(op.modes))).max())
                if not error <= UNITARY_TOLERANCE:
                    problem(path, "re", f"the matrix is not unitary: |U^dagger U - 1| reaches {error:.2e}")
                    continue
            states = {state[q] for q in modes}
            if "p1" in states and "p2" in states:
                p1 = [q for q in modes if state[q] == "p1"]
                p2 = [q for q in modes if state[q] == "p2"]
                problem(
                    path,
                    "modes",
                    f"modes {p1} are in the first pass and {p2} in the second (loaded from "
                    "a delay line); a second-pass photon meets only other loaded photons and vacuum",
                )
                continue
            # The modes' own states decide the pass, never what happened to other modes: light-free
            # modes join the second pass only by meeting a loaded photon (or vacuum that met one).
            stage = 2 if "p2" in states else 1
            closed = _CLOSED_ALWAYS if stage == 2 else _CLOSED_IN_FIRST_PASS
            q = next((q for q in modes if state[q] in closed), None)
            if q is not None:
                why = closed[state[q]]
                if state[q] == "gone":
                    h = next((h for h in held.values() if h.mode == q), None)
                    if h is not None:
                        why = (
                            f"is empty: its photon is in delay line {h.line!r} (op {h.path}); the first pass is "
                            "over for it, and only a load brings a photon back"
                        )
                problem(path, _modes_key(op), f"mode {q} {why}")
                continue
            if cond is not None:
                q = op.mode  # type: ignore[union-attr]
                if state[q] != "p2" or q not in loaded:
                    problem(
                        path,
                        "mode",
                        f"a conditional phase acts on a photon loaded from a delay line; mode {q} holds "
                        "none (the device's fast phase shifters sit at the second-pass inputs)",
                    )
                    continue
                if touched2[q]:
                    problem(
                        path,
                        "mode",
                        f"mode {q} was acted on after its load; the fast phase shifters sit at the "
                        "second-pass inputs: put the conditional right after the load",
                    )
                    continue
                waited = loaded[q].stored_ns
                if waited < ff_latency_ns:
                    problem(  # about the conditional and the register it reads, not the phase inside
                        _enclosing(path),
                        "register",
                        f"needs feed-forward within {waited:g} ns of the measurement (the photon "
                        f"waits {waited:g} ns in delay line {loaded[q].line!r}); the device's feed-forward takes "
                        f"{ff_latency_ns:g} ns: add a wait of at least {ff_latency_ns - waited:g} ns before the load",
                    )
                    continue
            for q in modes:
                state[q] = f"p{stage}"
                in_flight.add(q)
                if stage == 2 and cond is None:
                    touched2[q] = True
            contributions.append((round_index, (round_index * n_modes + modes[0]), path, op, stage))
            for q in modes[1:]:
                find.union((round_index * n_modes + modes[0]), (round_index * n_modes + q))
            if cond is not None:
                contributions[-1] = (round_index, (round_index * n_modes + modes[0]), path, (cond, op), stage)
                reg = registers.get(cond.register)
                if reg is not None:
                    find.union((round_index * n_modes + reg.modes[0]), (round_index * n_modes + modes[0]))
            continue

        if isinstance(op, Store):
            if state[op.mode] != "p1":
                why = {
                    "fresh": "holds no photon (no input)",
                    "p2": "is in the second pass: a photon can be stored once per shot",
                    "measured": "was measured",
                    "done": "was measured in the second pass",
                    "gone": "is empty: its photon went into a delay line",
                }[state[op.mode]]
                problem(path, "mode", f"mode {op.mode} {why}")
                continue
            if op.line in held:
                problem(
                    path,
                    "line",
                    f"delay line {op.line!r} is used twice at once: it holds the photon stored at op "
                    f"{held[op.line].path} until it is loaded",
                )
                continue
            held[op.line] = _Held(op.line, op.mode, path, clock, index)
            state[op.mode] = "gone"
            in_flight.discard(op.mode)
            find.union((round_index * n_modes + op.mode), ("line", round_index, op.line))
            contributions.append((round_index, (round_index * n_modes + op.mode), path, op, 1))
            continue

        if isinstance(op, Load):
            h = held.get(op.line)
            if h is None:
                problem(
                    path,
                    "line",
                    f"delay line {op.line!r} holds no photon here (nothing stored in it, or it was loaded already)",
                )
                continue
            if state[op.mode] == "done":
                problem(
                    path,
                    "mode",
                    f"mode {op.mode} was measured in the second pass: its detector is used in this "
                    "shot; load into another mode",
                )
                continue
            if state[op.mode] not in ("fresh", "measured", "gone"):
                problem(path, "mode", f"mode {op.mode} is not empty: a photon is loaded only into an empty mode")
                continue
            stored_ns = clock - h.at_ns
            if stored_ns > limit_ns:
                problem(
                    path,
                    "line",
                    f"the photon stored in delay line {op.line!r} at op {h.path} is loaded after "
                    f"{stored_ns:g} ns; a delay line keeps it {window_ns:g} ns ({device.delay_lines.max_rounds} round "
                    f"trips) less a {limits.coherence_margin:.0%} safety margin ({limit_ns:g} ns): "
                    f"{stored_ns - limit_ns:g} ns too late",
                )
                del held[op.line]  # reported once, not again as "never loaded"
                continue
            del held[op.line]
            rounds = max(1, math.ceil(stored_ns / loop_ns - 1e-9))
            loaded[op.mode] = _Loaded(op.mode, op.line, h.path, path, stored_ns, rounds, h.mode)
            state[op.mode] = "p2"
            in_flight.add(op.mode)
            touched2[op.mode] = False
            find.union(("line", round_index, op.line), (round_index * n_modes + op.mode))
            contributions.append((round_index, (round_index * n_modes + op.mode), path, loaded[op.mode], 2))
            load_limits[index] = (h.index, limit_ns)
            continue

        if isinstance(op, Measure):
            states = {state[q] for q in op.modes}
            if states & {"measured", "gone", "done"}:
                q = next(q for q in op.modes if state[q] in ("measured", "gone", "done"))
                what = {
                    "measured": "measured already",
                    "done": "measured already",
                    "gone": "empty: its photon went into a delay line",
                }[state[q]]
                problem(path, "modes", f"mode {q} is {what}")
                continue
            if "p1" in states and "p2" in states:
                problem(path, "modes", "a register is measured within one pass: these modes are in both")
                continue
            if op.into in registers:
                problem(path, "into", f"register {op.into!r} is written twice (first at op {registers[op.into].path})")
                continue
            bits = len(op.modes)
            if bits > limits.max_register_bits:
                problem(
                    path,
                    "modes",
                    f"register {op.into!r} would have {bits} bits, and its histogram 2^{bits} bins; the configured "
                    f"limit is {limits.max_register_bits} bits: measure into several registers",
                )
            else:
                result_bins += 2**bits
                if result_bins > limits.max_result_bins >= result_bins - 2**bits:
                    problem(
                        path,
                        "modes",
                        f"the registers measured up to here have {result_bins:,} histogram bins (2^bits each); the "
                        f"configured limit is {limits.max_result_bins:,}",
                    )
            stage = 2 if "p2" in states else 1
            registers[op.into] = _Register(op.into, round_index, stage, list(op.modes), path)
            for q in op.modes:
                state[q] = "measured" if stage == 1 else "done"
                in_flight.discard(q)
                find.union((round_index * n_modes + op.modes[0]), (round_index * n_modes + q))
            contributions.append((round_index, (round_index * n_modes + op.modes[0]), path, op, stage))
            continue

    for h in held.values():
        problems.append(
            CircuitProblem(
                op=str(h.path),
                field="line",
                message=f"delay line {h.line!r} is never loaded: the photon stored here would be lost",
            )
        )

    for a, b in pairs:
        find.union(a, b)
    components = _components(contributions, find)
    _check_fit(components, device, limits, health, problems)
    builds = pack(components, device, health, limits)
    _check_phases(builds, limits, problems)
    slack = _slack(load_limits, clock_at)
    return Analysis(ops, problems.report(), components, round_index + 1, edges, predecessors, slack, builds)


def _check_phases(builds: list[_PhaseBuild], limits: Limits, problems: list[CircuitProblem]) -> None:
    """The plan's size: its phases (m² heater settings each) and feed-forward branches (2^bits per phase)."""
    if len(builds) > limits.max_phases:
        beyond = builds[limits.max_phases].components[0]
        path, key = beyond.added[0] if beyond.added else (beyond.ops[0], None)
        problems.append(
            CircuitProblem(
                op=str(path),
                field=key,
                message=(
                    f"the circuit needs at least {len(builds):,} phases (device configurations, one after "
                    f"another); the configured limit is {limits.max_phases:,}, and the phase from this op on is the "
                    "first beyond it (submit the rest as another job)"
                ),
            )
        )
    branches = 0
    for build in builds:
        if build.bits > limits.max_ff_bits:
            continue  # one component reads too many bits: refused already, at that component
        branches += 2**build.bits if build.bits else 0
        if branches > limits.max_branches:
            first = next(c for c in build.components if c.condition_paths)
            problems.append(
                CircuitProblem(
                    op=_enclosing(first.condition_paths[0]),
                    field="register",
                    message=(
                        f"the plan needs {branches:,} feed-forward branches up to the phase of this conditional "
                        f"(2^bits read, per phase); the configured limit is {limits.max_branches:,}"
                    ),
                )
            )
            return


def _slack(load_limits: dict[int, tuple[int, float]], clock_at: list[float]) -> float | None:
    """Least slack (ns) before any stored photon's deadline, with deadlines propagated backwards.

    A load's latest time is its store's time plus the window less the margin;
    every op the load depends on must end early enough for it. Propagated
    backwards through the dependency graph, an op's latest time is the load's
    less the waits on the path between them, and its time in the shot
    (``clock_at``) is the load's less *all* the waits between them: waits are
    the only ops that take time, and ops are in time order. So no op has less
    slack than the load itself, and the least slack is the loads' own, found
    without walking the graph (a walk per load cost loads x waits between).
    """
    return min(
        (limit - (clock_at[load] - clock_at[store]) for load, (store, limit) in load_limits.items()), default=None
    )


def _components(contributions: list[tuple[int, Any, str | int, Any, int]], find: _Find) -> list[Component]:
    by_root: dict[Any, Component] = {}
    order: list[Component] = []
    roots: dict[Any, Any] = {}  # the union-find is complete: each key's root is looked up once
    for position, (round_index, key, path, op, stage) in enumerate(contributions):
        root = roots.get(key)
        if root is None:
            root = roots[key] = find.find(key)
        component = by_root.get(root)
        if component is None:
            component = by_root[root] = Component(round=round_index, first_op=position)
            order.append(component)
        component.ops.append(path)
        kind = type(op)
        if kind is BeamSplitter or kind is MziOp or kind is PhaseShift:  # most ops: keep this short
            modes = op.modes if kind is not PhaseShift else (op.mode,)
            if stage == 1:
                seen, listed = component.seen1, component.pass1
            else:
                seen, listed = component.seen2, component.pass2
            for q in modes:
                if q not in seen:
                    seen.add(q)
                    listed.append(q)
                    component.added.append((path, "modes" if kind is not PhaseShift else "mode"))
            component.gates.append((stage, modes, op))
            continue
        if kind is tuple:  # a conditional phase: (If, PhaseShift)
            cond, ps = op
            component.conditions.append((cond.register, cond.equals, ps.mode, ps.phi))
            component.condition_paths.append(path)
            continue
        if kind is _Loaded:
            component.loads[op.mode] = op
            if op.mode not in component.seen2:
                component.pass2.append(op.mode)
                component.seen2.add(op.mode)
                component.added.append((path, "mode"))
            continue
        modes = _modes_of(op)
        seen, target = (component.seen2, component.pass2) if stage == 2 else (component.seen1, component.pass1)
        if isinstance(op, Store):
            seen, target = component.seen1, component.pass1
        for q in modes:
            if q not in seen:
                seen.add(q)
                target.append(q)
                component.added.append((path, _modes_key(op)))
        if isinstance(op, Input):
            component.inputs[op.mode] = op
        elif isinstance(op, UnitaryOp):
            component.gates.append((stage, modes, op))
        elif isinstance(op, Measure):
            for q in op.modes:
                if (stage, q) not in component.measured:
                    component.measured.add((stage, q))
                    component.detected_at.append(path)
            component.registers.append(_Register(op.into, round_index, stage, list(op.modes), path))
    return order


def _check_fit(
    components: list[Component],
    device: DeviceDescription,
    limits: Limits,
    health: Health,
    problems: list[CircuitProblem],
) -> None:
    """What one shot of each component needs of the device; each problem at the op that goes beyond it."""
    usable_modes = device.modes - len(health.modes)
    usable_lines = device.delay_lines.count - len(health.delay_lines)
    good_detectors = device.modes - len(health.detectors | health.modes)
    shifters = device.feedforward.phase_shifters

    def problem(path: str | int, key: str, message: str) -> None:
        problems.append(CircuitProblem(op=str(path), field=key, message=message))

    for c in components:
        first = str(c.ops[0])
        modes = len(c.pass1) + len(c.pass2)
        if modes > usable_modes:
            path, key = c.added[max(usable_modes, 0)]
            problem(
                path,
                key,
                f"the operations from op {first} on need {modes} physical modes in one shot ({len(c.pass1)} in "
                f"the first pass, {len(c.pass2)} in the second); the device has {usable_modes} usable, and this "
                "operation brings in the first mode beyond them",
            )
        if len(c.loads) > usable_lines:
            beyond = list(c.loads.values())[max(usable_lines, 0)]
            problem(
                beyond.load_path,
                "line",
                f"the operations from op {first} on hold {len(c.loads)} photons in delay lines at once; the device "
                f"has {usable_lines} usable, and this load brings back the first photon beyond them",
            )
        targets: list[int] = []
        read: list[str] = []
        bits = 0
        for (register, _, mode, _), path in zip(c.conditions, c.condition_paths, strict=True):
            if mode not in targets:
                targets.append(mode)
                if len(targets) == shifters + 1:
                    problem(
                        path,
                        "mode",
                        f"feed-forward on {len(c.ff_modes)} modes in one shot (from op {first} on); the device has "
                        f"{shifters} fast phase shifters, and this conditional phase needs one more",
                    )
            if register not in read:
                read.append(register)
                width = next((len(r.modes) for r in c.registers if r.name == register), 0)  # 0: refused already
                if bits <= limits.max_ff_bits < bits + width:
                    total = sum(len(r.modes) for r in c.registers if r.name in {reg for reg, *_ in c.conditions})
                    problem(
                        _enclosing(path),
                        "register",
                        f"feed-forward reads {total} register bits in one shot (from op {first} on; "
                        f"{_power_of_two(total)} branches to plan); the configured limit is {limits.max_ff_bits} bits, "
                        f"and register {register!r} goes beyond it",
                    )
                bits += width
        if len(c.detected_at) > good_detectors:
            problem(
                c.detected_at[max(good_detectors, 0)],
                "modes",
                f"{len(c.detected_at)} detections in one shot (from op {first} on); the device has {good_detectors} "
                "working detectors, and this measurement needs more",
            )


def _power_of_two(bits: int) -> str:
    return f"{2**bits:,}" if bits < 64 else f"2^{bits}"


# --- from components to phases ---------------------------------------------------------------------


@dataclass
class _PhaseBuild:
    round: int
    components: list[Component] = field(default_factory=list)
    modes: int = 0
    lines: int = 0
    ff: int = 0
    bits: int = 0
    """Register bits its feed-forward reads: it plans 2^bits branches."""

    def fits(self, c: Component, capacity: tuple[int, int, int, int]) -> bool:
        modes, lines, ff, bits = capacity
        return (
            self.modes + len(c.pass1) + len(c.pass2) <= modes
            and self.lines + len(c.loads) <= lines
            and self.ff + len(c.ff_modes) <= ff
            and self.bits + c.ff_bits <= bits
        )

    def add(self, c: Component) -> None:
        self.components.append(c)
        self.modes += len(c.pass1) + len(c.pass2)
        self.lines += len(c.loads)
        self.ff += len(c.ff_modes)
        self.bits += c.ff_bits


def pack(components: list[Component], device: DeviceDescription, health: Health, limits: Limits) -> list[_PhaseBuild]:
    """Components into phases: first fit within each round, in circuit order (deterministic).

    A phase's feed-forward reads at most ``max_ff_bits`` (its branches are
    every outcome of the bits its components read together). Packing stops
    one phase past ``max_phases``: such a circuit is refused, and first fit
    costs components times open phases.
    """
    capacity = (
        device.modes - len(health.modes),
        device.delay_lines.count - len(health.delay_lines),
        device.feedforward.phase_shifters,
        limits.max_ff_bits,
    )
    phases: list[_PhaseBuild] = []
    open_in_round: list[_PhaseBuild] = []
    current_round = -1
    for c in components:
        if c.round != current_round:
            current_round, open_in_round = c.round, []
        target = next((p for p in open_in_round if p.fits(c, capacity)), None)
        if target is None:
            if len(phases) > limits.max_phases:
                break
            target = _PhaseBuild(round=c.round)
            open_in_round.append(target)
            phases.append(target)
        target.add(c)
    return phases


def _place(
    build: _PhaseBuild, device: DeviceDescription, health: Health
) -> tuple[dict[tuple[int, int, int], int], dict[tuple[int, str, str | int], int]]:
    """Physical modes for (component, pass, logical mode), measured ones on working detectors; physical delay lines."""
    good = [q for q in range(device.modes) if q not in health.modes]
    with_detector = [q for q in good if q not in health.detectors]
    without = [q for q in good if q in health.detectors]
    placement: dict[tuple[int, int, int], int] = {}
    for ci, c in enumerate(build.components):
        for stage, logical in [(1, c.pass1), (2, c.pass2)]:
            for q in logical:
                pool = with_detector if (stage, q) in c.measured or not without else without
                if not pool:
                    pool = with_detector
                placement[(ci, stage, q)] = pool.pop(0)
    lines = [n for n in range(device.delay_lines.count) if n not in health.delay_lines]
    line_of: dict[tuple[int, str, str | int], int] = {}
    for ci, c in enumerate(build.components):
        for load in c.loads.values():
            line_of[(ci, load.line, load.store_path)] = lines.pop(0)
    return placement, line_of


def build_phases(
    analysis: Analysis, circuit: Circuit, device: DeviceDescription, limits: Limits, health: Health
) -> list[Phase]:
    builds = analysis.builds if analysis.builds is not None else pack(analysis.components, device, health, limits)
    m = device.modes
    settle_s = device.heaters.settle_s * limits.settle_factor
    last_phase_of_mode: dict[int, int] = {}
    phases: list[Phase] = []
    phase_unitaries: list[np.ndarray] = []
    blocks = [
        (logical, c.gates, stage)
        for c in analysis.components
        for stage, logical in ((1, c.pass1), (2, c.pass2))
        if logical and c.gates
    ]
    keys = [
        (id(c), stage)
        for c in analysis.components
        for stage, logical in ((1, c.pass1), (2, c.pass2))
        if logical and c.gates
    ]
    unitaries = dict(zip(keys, _compose(blocks), strict=True))
    for index, build in enumerate(builds):
        placement, line_of = _place(build, device, health)
        top = max(placement.values()) + 1 if placement else 1
        u = np.eye(top, dtype=np.complex128)
        inputs: list[InputSetting] = []
        routes: list[DelayRoute] = []
        registers: list[RegisterRead] = []
        deadlines: list[Deadline] = []
        place_out: list[Placement] = []
        conditions: list[tuple[str, int, int, float]] = []
        register_bits: dict[str, list[int]] = {}
        depends: set[int] = set()
        ops: list[str | int] = []
        for ci, c in enumerate(build.components):
            ops.extend(c.ops)
            for (cj, stage, q), physical in placement.items():
                if cj == ci:
                    place_out.append(Placement(logical=q, physical=physical, pass_=stage))  # type: ignore[arg-type]
                    if q in last_phase_of_mode:
                        depends.add(last_phase_of_mode[q])
            for q, inp in c.inputs.items():
                inputs.append(
                    InputSetting(mode=placement[(ci, 1, q)], state=inp.state, power_w=inp.power_w, phase_rad=inp.phase)
                )
            for stage, logical in ((1, c.pass1), (2, c.pass2)):
                if logical and c.gates:
                    rows = [placement[(ci, stage, q)] for q in logical]
                    u[np.ix_(rows, rows)] = unitaries[(id(c), stage)]
            for q, load in c.loads.items():
                physical_line = line_of[(ci, load.line, load.store_path)]
                routes.append(
                    DelayRoute(
                        line=physical_line,
                        out_mode=placement[(ci, 1, load.from_mode)],
                        in_mode=placement[(ci, 2, q)],
                        rounds=load.rounds,
                    )
                )
                window = device.delay_lines.max_rounds * device.delay_lines.loop_s * 1e9
                limit = window * (1 - limits.coherence_margin)
                deadlines.append(
                    Deadline(
                        line=load.line,
                        physical_line=physical_line,
                        store_op=str(load.store_path),
                        load_op=str(load.load_path),
                        stored_ns=load.stored_ns,
                        limit_ns=limit,
                        slack_ns=limit - load.stored_ns,
                        rounds=load.rounds,
                    )
                )
            for reg in c.registers:
                columns = [placement[(ci, reg.pass_, q)] + (m if reg.pass_ == 2 else 0) for q in reg.modes]
                registers.append(RegisterRead(name=reg.name, columns=columns, modes=reg.modes, pass_=reg.pass_))  # type: ignore[arg-type]
                register_bits[reg.name] = [placement[(ci, reg.pass_, q)] for q in reg.modes]
            conditions.extend((r, v, placement[(ci, 2, q)], phi) for r, v, q, phi in c.conditions)
        for p in place_out:
            last_phase_of_mode[p.logical] = index
        phase_unitaries.append(u)
        ff_modes, branches = _branches(conditions, register_bits)
        two_pass = bool(routes)
        shots = circuit.shots
        duration = settle_s + shots / device.shot_rate_hz + shots * limits.readout_s_per_shot
        phases.append(
            Phase(
                index=index,
                round=build.round,
                ops=compress_paths(ops),
                depends_on=sorted(depends),
                mesh_phases=[],  # filled in below, every phase's unitary decomposed at once
                inputs=sorted(inputs, key=lambda i: i.mode),
                delay_lines=routes,
                ff_modes=ff_modes,
                branches=branches,
                registers=registers,
                placement=place_out,
                resources=Resources(
                    modes=sorted(p.physical for p in place_out),
                    detectors=sorted({c for r in registers for c in r.columns}),
                    delay_lines=sorted(r.line for r in routes),
                    ff_shifters=len({q for _, _, q, _ in conditions}),
                ),
                shots=shots,
                width=2 * m if two_pass else m,
                settle_s=settle_s,
                duration_s=duration,
                deadlines=deadlines,
            )
        )
    settings = _decompose(phase_unitaries, m)
    return [msgspec.structs.replace(p, mesh_phases=mesh) for p, mesh in zip(phases, settings, strict=True)]


def _decompose(unitaries: list[np.ndarray], modes: int) -> list[list[float]]:
    """Mesh phases for each phase's unitary: the same ones decomposed once, the same sizes together."""
    unique: dict[bytes, int] = {}
    for u in unitaries:
        unique.setdefault(u.tobytes() + bytes([u.shape[0]]), len(unique))
    by_size: dict[int, list[tuple[int, np.ndarray]]] = {}
    seen: set[int] = set()
    for u in unitaries:
        k = unique[u.tobytes() + bytes([u.shape[0]])]
        if k not in seen:
            seen.add(k)
            by_size.setdefault(u.shape[0], []).append((k, u))
    decomposed: dict[int, list[float]] = {}
    for group in by_size.values():
        for (k, _), block in zip(group, clements_many(np.array([u for _, u in group])), strict=True):
            decomposed[k] = embed_phases(block, modes).tolist()
    return [decomposed[unique[u.tobytes() + bytes([u.shape[0]])]] for u in unitaries]


def _branches(
    conditions: list[tuple[str, int, int, float]], register_bits: dict[str, list[int]]
) -> tuple[list[int], list[Branch]]:
    """Every outcome of the registers feed-forward reads, and the fast phases each sets."""
    used = sorted({r for r, _, _, _ in conditions})
    if not used:
        return [], []
    ff_modes = [q for r in used for q in register_bits[r]]
    branches = []
    for outcome in range(2 ** len(ff_modes)):
        pattern = format(outcome, f"0{len(ff_modes)}b")
        values: dict[str, int] = {}
        offset = 0
        for r in used:
            width = len(register_bits[r])
            values[r] = int(pattern[offset : offset + width], 2)
            offset += width
        phases: dict[int, float] = {}
        for r, v, q, phi in conditions:
            if values[r] == v:
                phases[q] = (phases.get(q, 0.0) + phi) % (2 * math.pi)
        branches.append(Branch(pattern=pattern, outcome=values, phases=phases))
    return ff_modes, branches


def plan_id(circuit_digest: str, device_key: str, calibration: int | None, strategy: str) -> str:
    body = f"{circuit_digest}|{device_key}|{calibration}|{strategy}".encode()
    return "plan-" + hashlib.blake2b(body, digest_size=12).hexdigest()


def device_key(device: DeviceDescription, health: Health) -> str:
    digest = hashlib.blake2b(msgspec.json.encode(device), digest_size=12).hexdigest()
    return f"{digest}:{health.key()}"


def compile_circuit(
    circuit: Circuit,
    device: DeviceDescription,
    *,
    device_name: str = "",
    calibration: int | None = None,
    limits: Limits | None = None,
    health: Health | None = None,
    strategy: str = "static",
) -> Plan:
    """The plan for a circuit on a device; `CircuitError` listing every problem if there is one."""
    began = time.perf_counter()
    limits = limits or Limits()
    health = health or Health()
    analysis = analyse(circuit, device, limits, health)
    if analysis.problems:
        raise CircuitError(analysis.problems)
    phases = build_phases(analysis, circuit, device, limits, health)
    slacks = [d.slack_ns for p in phases for d in p.deadlines]
    configurations = {tuple(p.mesh_phases) for p in phases}
    metrics = PlanMetrics(
        total_duration_s=sum(p.duration_s for p in phases),
        phases=len(phases),
        ops=sum(len(p.ops) for p in phases),
        min_slack_ns=analysis.slack_ns if slacks else None,
        compile_s=time.perf_counter() - began,
        reconfigurations=len(configurations),
    )
    digest = circuit_hash(circuit)
    return Plan(
        id=plan_id(digest, device_key(device, health), calibration, strategy),
        circuit=digest,
        device=device_name,
        identity=device.identity.idn(),
        calibration=calibration,
        strategy=strategy,
        modes=device.modes,
        phases=phases,
        metrics=metrics,
    )
