"""The one pass over a circuit's operations: every problem against the device and the limits.

`Analyser` reads the operations in circuit order (O(V + E)) and does the
bookkeeping a shot of the device imposes (docs/circuits.md, "How a circuit
runs"):

* A *round* is one shot structure: inputs, a first pass through the mesh,
  stored photons waiting in delay lines, a second pass with the loaded
  photons, detection. A new round starts when a mode that was measured gets
  a new input.
* Every logical mode has a `ModeState` within the round, changed by its own
  operations only; an operation a mode's state does not allow is a problem
  at that op.
* Every op depends on the last op on each of its modes, delay lines and
  registers, and on the shot's clock (waits, and the stores and loads
  between them): the dependency graph.
* Operations that share modes, delay lines or registers are joined into
  *components* (`_components`), which are packed into phases (`_pack`).

Every problem is collected with its op's index path; nothing is planned
unless there are none.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.circuit import (
    BeamSplitter,
    Circuit,
    CircuitProblem,
    Conditional,
    Fidelity,
    HomVisibility,
    If,
    Input,
    Load,
    Measure,
    MziOp,
    Op,
    PhaseShift,
    ProblemList,
    Store,
    Transmission,
    UnitaryOp,
    Wait,
    flatten,
    number_text,
    parse_ops,
)
from protocol.photonica import DeviceDescription
from protocol.plan import Pass

from ._components import Component, Contribution, Loaded, Register, UnionFind, check_fit, group
from ._limits import Health, Limits
from ._ops import count_ops, enclosing, few, modes_key, modes_of
from ._pack import PhaseBuild, check_plan_size, pack

UNITARY_TOLERANCE = 1e-8


class ModeState(enum.Enum):
    """Where a logical mode's light is within a round; each member's value says what that means.

    A mode moves through these by its own operations only (a store empties its
    mode, a load fills the mode it names, neither touches any other mode):

    | op | from | to |
    |---|---|---|
    | input | FRESH (any other: a new round first, every mode FRESH) | FIRST_PASS |
    | gate in the first pass (no mode in SECOND_PASS) | FRESH, FIRST_PASS | FIRST_PASS |
    | gate in the second pass (a mode in SECOND_PASS) | FRESH, EMPTIED, MEASURED, SECOND_PASS | SECOND_PASS |
    | store | FIRST_PASS | EMPTIED |
    | load | FRESH, MEASURED, EMPTIED | SECOND_PASS |
    | measure (no mode in SECOND_PASS) | FRESH, FIRST_PASS | MEASURED |
    | measure (a mode in SECOND_PASS) | FRESH, SECOND_PASS | DONE |

    Where a stored photon is, is the business of the delay line that holds it
    (`Analyser.held`), not of any mode's state.
    """

    FRESH = "nothing has happened to it in this round: vacuum, free for an input or a load"
    FIRST_PASS = "carries first-pass light (an input, or vacuum a first-pass gate met)"
    EMPTIED = "empty: its photon went into a delay line (stored; loaded back or not, it is elsewhere)"
    MEASURED = "detected in the first pass; free for a load, or as vacuum a loaded photon meets"
    SECOND_PASS = "carries second-pass light (a loaded photon, or vacuum a second-pass gate met)"
    DONE = "detected in the second pass: the round is over for it"


FRESH, FIRST_PASS, EMPTIED, MEASURED, SECOND_PASS, DONE = ModeState  # the hot path reads module globals

_CLOSED_ALWAYS = {
    DONE: "was measured in the second pass: this shot is over for it; a new input starts the next",
}
_CLOSED_IN_FIRST_PASS = {
    **_CLOSED_ALWAYS,
    EMPTIED: "is empty: its photon went into a delay line; the first pass is over for it",
    MEASURED: "was measured; after a measurement a mode is used again only by a new input (a new shot) or as "
    "vacuum in the second pass",
}
"""Why a gate cannot act on a mode in a state: in any pass, and in the first pass."""

_NOT_STORABLE = {
    FRESH: "holds no photon (no input)",
    SECOND_PASS: "is in the second pass: a photon can be stored once per shot",
    MEASURED: "was measured",
    DONE: "was measured in the second pass",
    EMPTIED: "is empty: its photon went into a delay line",
}
"""Why a store cannot take a mode's photon (anything but FIRST_PASS)."""

_NOT_MEASURABLE = {
    MEASURED: "measured already",
    DONE: "measured already",
    EMPTIED: "empty: its photon went into a delay line",
}
"""Why a measurement cannot detect a mode."""


@dataclass
class _Held:
    """A photon in a delay line: where and when it was stored."""

    line: str
    mode: int
    path: str | int
    at_ns: float
    index: int


@dataclass
class Analysis:
    """What `analyse` found: the problems, or the components and phases a plan is built from."""

    ops: list[Op | None]
    problems: list[CircuitProblem]
    components: list[Component]
    rounds: int
    edges: int
    predecessors: list[list[int]]
    """Op-level dependency graph (flattened op order): each op's predecessors."""
    slack_ns: float | None = None
    """Least slack before a stored photon's deadline, propagated backwards through the graph."""
    builds: list[PhaseBuild] | None = None
    """The components packed into phases (the plan's phases, once built)."""


_UNITARY_ON_PHOTONS = {"photon", "vacuum", "ps", "bs", "mzi", "unitary", "measure"}
"""What a round may hold for a fidelity against its ideal distribution."""


_CONDITIONAL_BITS = 8
"""The widest register a ``conditional`` figure conditions on (a probability per value)."""


class _StopChecking(Exception):
    """The ops from here on are not checked (a round beyond the configured phases)."""


Handler = Callable[[int, "str | int", Any, "If | None"], None]
"""One op kind's method: (index in the flattened ops, op path, op, the conditional it is in)."""


_WORKING = Health()
"""Nothing degraded."""


def analyse(circuit: Circuit, device: DeviceDescription, limits: Limits, health: Health = _WORKING) -> Analysis:
    """Check the circuit against the device and limits; group its operations into components.

    Every size the client chose is checked before anything in proportion to
    it is built: the modes and the number of ops first (per-mode state and the
    typed ops come after), each op's own sizes before its matrix, histogram or
    round is made (docs/circuits.md, "Limits").
    """
    problems = ProblemList(limits.max_problems)
    if not _header_fits(circuit, limits, problems):
        return Analysis([], problems.report(), [], 0, 0, [])
    ops, _ = parse_ops(circuit, problems)
    analyser = Analyser(circuit, device, limits, problems)
    analyser.run(flatten(ops))
    analyser.check_figures(circuit)
    return analyser.conclude(ops, health)


def _header_fits(circuit: Circuit, limits: Limits, problems: ProblemList) -> bool:
    """The header's sizes; False if the modes or ops are too many to build anything for."""

    def problem(key: str, message: str) -> None:
        problems.append(CircuitProblem(op=None, field=key, message=message))

    if circuit.modes > limits.max_modes:
        problem("modes", f"{number_text(circuit.modes)} modes is more than the configured limit of {limits.max_modes}")
    if circuit.shots > limits.max_shots:
        problem("shots", f"{number_text(circuit.shots)} shots is more than the configured limit of {limits.max_shots}")
    if len(circuit.name) > limits.max_name_chars:
        problem("name", f"the name has {len(circuit.name):,} characters; the limit is {limits.max_name_chars}")
    count = count_ops(circuit.ops)
    if count > limits.max_ops:
        problem(
            "ops",
            f"{count:,} operations (conditionals' bodies included) is more than the configured limit of "
            f"{limits.max_ops:,}",
        )
    return not (circuit.modes > limits.max_modes or count > limits.max_ops)


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
            lengths = few(sorted({len(row) for row in rows}))
            return key, f"the matrix must be {k}x{k} for {k} modes; `{key}` has {len(rows)} rows of {lengths} entries"
    return None


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


class Analyser:
    """One pass over a circuit's flattened operations, a method per op kind.

    Each method first records the op in the dependency graph (`_record`, even
    when the op is refused: the graph is the circuit's), then checks what
    every op must be (`_well_formed`), then what its kind needs of the modes'
    states, the delay lines and the registers; a refused op changes no state.
    An op's union-find key is ``round * modes + mode`` (a delay line's is
    ``("line", round, name)``); what each op contributes to its component is
    kept in `contributions` and applied once the components are known.
    """

    def __init__(self, circuit: Circuit, device: DeviceDescription, limits: Limits, problems: ProblemList) -> None:
        self.device = device
        self.limits = limits
        self.problems = problems
        self.n_modes = n = circuit.modes
        self.loop_ns = device.delay_lines.loop_s * 1e9
        self.window_ns = device.delay_lines.max_rounds * self.loop_ns
        self.limit_ns = self.window_ns * (1 - limits.coherence_margin)
        self.ff_latency_ns = device.feedforward.latency_s * 1e9
        # The round, and each mode's state in it.
        self.round_index = 0
        self.clock = 0.0
        """The shot's time (ns): waits are the only ops that take time."""
        self.state: list[ModeState] = [FRESH] * n
        self.touched2: list[bool] = [False] * n
        """Acted on in the second pass (since its load): the fast phase shifters are behind it."""
        self.in_flight: set[int] = set()
        """The modes in FIRST_PASS or SECOND_PASS, kept as they change: no scan of every mode per op."""
        self.loaded: dict[int, Loaded] = {}
        self.held: dict[str, _Held] = {}
        """Delay line -> the photon it holds."""
        self.registers: dict[str, Register] = {}
        self.result_bins = 0
        """Histogram bins of the registers measured so far (2^bits each)."""
        # The dependency graph: the last op that touched each mode / delay line / register.
        self.last_on: dict[Any, int] = {}
        self.predecessors: list[list[int]] = []
        self.edges = 0
        self.last_wait: int | None = None
        """The graph's clock: the last wait, and the stores and loads since it."""
        self.since_wait: list[int] = []
        self.clock_at: list[float] = []
        """Each op's time within its shot."""
        # Components: joined in a union-find, filled in once it is complete.
        self.find = UnionFind()
        self.pairs: set[tuple[int, int]] = set()
        """Modes an in-flight gate joins: unions done once per distinct pair, after the pass."""
        self.contributions: list[Contribution] = []
        self.load_limits: dict[int, tuple[int, float]] = {}
        """Load index -> (its store's index, window less margin)."""
        self.round_kinds: dict[int, set[str]] = {}
        """Round -> what its ops are (``photon``, ``coherent``, ``vacuum``, ``bs``, ``store``, ``if``, ...)."""
        self.lines: set[str] = set()
        """The delay lines the circuit stores into."""

    # --- the pass ----------------------------------------------------------------------------------

    def run(self, flat: list[tuple[str | int, Op, If | None]]) -> None:
        """Every op in circuit order, each by its kind's method."""
        handlers: dict[type, Handler] = {  # bound methods: kept only while the pass runs (no cycle to collect)
            Input: self.input,
            PhaseShift: self.ps,
            BeamSplitter: self.bs,
            MziOp: self.mzi,
            UnitaryOp: self.unitary,
            Store: self.store,
            Load: self.load,
            Wait: self.wait,
            Measure: self.measure,
            If: self.if_,
        }
        clock_at = self.clock_at
        with contextlib.suppress(_StopChecking):  # a round beyond the configured phases: checked no further
            for index, (path, op, cond) in enumerate(flat):
                clock_at.append(self.clock)
                handlers[type(op)](index, path, op, cond)
                kind = (
                    op.state if isinstance(op, Input) else "if" if cond is not None else type(op).__struct_config__.tag
                )
                self.round_kinds.setdefault(self.round_index, set()).add(str(kind))
                if isinstance(op, Store):
                    self.lines.add(op.line)
        for h in self.held.values():
            self.problem(h.path, "line", f"delay line {h.line!r} is never loaded: the photon stored here would be lost")

    def conclude(self, ops: list[Op | None], health: Health) -> Analysis:
        """Components from what the ops contributed; whether each fits a shot, and the plan its phases."""
        for a, b in self.pairs:
            self.find.union(a, b)
        components = group(self.contributions, self.find)
        check_fit(components, self.device, self.limits, health, self.problems)
        builds = pack(components, self.device, health, self.limits)
        check_plan_size(builds, self.limits, self.problems)
        slack = _slack(self.load_limits, self.clock_at)
        return Analysis(
            ops, self.problems.report(), components, self.round_index + 1, self.edges, self.predecessors, slack, builds
        )

    def check_figures(self, circuit: Circuit) -> None:
        """The declared figures (``analysis``): their registers exist and have the shape each figure needs."""
        labels: set[str] = set()
        for i, figure in enumerate(circuit.analysis):
            where = f"analysis.{i}"
            label = figure.label()
            if label in labels:
                self.problem(where, "name", f"a second figure named {label!r}: give each its own `name`")
            labels.add(label)
            reg = self.registers.get(figure.register)
            if reg is None:
                self.problem(where, "register", f"no op measures into register {figure.register!r}")
                continue
            bits = len(reg.modes)
            if isinstance(figure, HomVisibility):
                ref = self.registers.get(figure.reference)
                if bits != 2:
                    self.problem(where, "register", f"HOM visibility needs a 2-mode register; {reg.name!r} has {bits}")
                if ref is None:
                    self.problem(where, "reference", f"no op measures into register {figure.reference!r}")
                elif len(ref.modes) != 2:
                    self.problem(
                        where,
                        "reference",
                        f"HOM visibility needs a 2-mode reference; {ref.name!r} has {len(ref.modes)}",
                    )
            elif isinstance(figure, Fidelity):
                kinds = self.round_kinds.get(reg.round, set())
                other = sorted(kinds - _UNITARY_ON_PHOTONS)
                if reg.pass_ != 1 or other or "photon" not in kinds:
                    because = f"it has {', '.join(other)}" if other else "no photon enters it"
                    self.problem(
                        where,
                        "register",
                        f"fidelity needs a register whose round is photons through a unitary; "
                        f"{reg.name!r}'s round is not ({because if reg.pass_ == 1 else 'it is a second pass'})",
                    )
            elif isinstance(figure, Conditional):
                given = self.registers.get(figure.given)
                if given is None:
                    self.problem(where, "given", f"no op measures into register {figure.given!r}")
                elif given.round != reg.round or given.name == reg.name:
                    self.problem(
                        where,
                        "given",
                        f"{given.name!r} is not another register read in {reg.name!r}'s shots (its round)",
                    )
                elif len(given.modes) > _CONDITIONAL_BITS:
                    self.problem(
                        where,
                        "given",
                        f"{given.name!r} has {len(given.modes)} bits; a condition has {_CONDITIONAL_BITS} at most",
                    )
            elif isinstance(figure, Transmission):
                if bits != 1:
                    self.problem(where, "register", f"transmission needs a 1-mode register; {reg.name!r} has {bits}")
                if figure.line not in self.lines:
                    self.problem(where, "line", f"no op stores a photon into delay line {figure.line!r}")
                elif reg.pass_ != 2:
                    self.problem(
                        where, "register", f"{reg.name!r} is measured before any photon comes back from a line"
                    )

    def problem(self, path: str | int | None, key: str | None, message: str) -> None:
        self.problems.append(CircuitProblem(op=None if path is None else str(path), field=key, message=message))

    # --- what every op does first ----------------------------------------------------------------

    def _record(self, index: int, modes: Sequence[int], other: Any, cond: If | None) -> None:
        """The op depends on the last op on each of its modes, its delay line or register, its condition's register."""
        keys: list[Any] = list(modes)
        if other is not None:
            keys.append(other)
        if cond is not None:
            keys.append(("r", cond.register))
        last_on = self.last_on
        preds: list[int] = []
        for key in keys:
            before = last_on.get(key)
            if before is not None and before not in preds:
                preds.append(before)
            last_on[key] = index
        self.edges += len(preds)
        self.predecessors.append(preds)

    def _read_clock(self, index: int) -> None:
        """A store or load happens at a time: after the last wait, before the next."""
        last_wait = self.last_wait
        if last_wait is not None and last_wait not in self.predecessors[index]:
            self.predecessors[index].append(last_wait)
            self.edges += 1
        self.since_wait.append(index)

    def _well_formed(self, path: str | int, op: Op, modes: list[int], cond: If | None) -> bool:
        """What every op must be: modes in range and distinct, and only a phase shift inside a conditional."""
        n = self.n_modes
        if isinstance(op, UnitaryOp | Measure) and not 0 < len(modes) <= n:
            self.problem(
                path,
                "modes",
                f"lists {len(modes)} modes: an operation acts on at least one mode, and on at most the "
                f"{n} modes the circuit declares",
            )
            return False
        bad = [q for q in modes if q >= n]
        if bad:
            self.problem(
                path,
                modes_key(op),
                f"mode {number_text(bad[0])} is out of range: the circuit declares {n} modes (0-{n - 1})",
            )
            return False
        if len(set(modes)) != len(modes):
            self.problem(path, "modes", f"the modes {few(modes)} repeat: an operation acts on distinct modes")
            return False
        if cond is not None and not isinstance(op, PhaseShift):
            self.problem(
                path,
                "op",
                f"a conditional block may hold only phase shifts (ps): the device's feed-forward "
                f"sets fast phase shifters; {type(op).__name__} is not one",
            )
            return False
        return True

    # --- inputs and rounds -------------------------------------------------------------------------

    def input(self, index: int, path: str | int, op: Input, cond: If | None) -> None:
        """Light enters a mode at the start of a shot; into a mode used already, it starts a new round."""
        modes = [op.mode]
        self._record(index, modes, None, cond)
        if not self._well_formed(path, op, modes, cond):
            return
        if self.state[op.mode] is not FRESH and not self._new_round(path, op):
            return
        sources = self.device.sources
        if op.state == "coherent" and op.power_w > sources.coherent_max_w:
            most = sources.coherent_max_w
            self.problem(path, "power_w", f"{op.power_w} W of coherent light is more than the device's {most} W")
        if op.state == "photon" and not sources.single_photon:
            self.problem(path, "state", "the device has no single-photon sources")
        self.state[op.mode] = FIRST_PASS
        self.in_flight.add(op.mode)
        self.contributions.append((self.round_index, (self.round_index * self.n_modes + op.mode), path, op, 1))

    def _new_round(self, path: str | int, op: Input) -> bool:
        """A new shot, once the last is fully measured; `_StopChecking` past the configured phases."""
        held, in_flight = self.held, self.in_flight
        if held or in_flight:
            what = f"delay lines {few(held)} hold photons" if held else f"modes {few(in_flight)} are still in flight"
            self.problem(
                path,
                "mode",
                f"mode {op.mode} gets a new input while {what}: a new shot starts only "
                "when the previous one is fully measured",
            )
            return False
        if self.round_index + 1 >= self.limits.max_phases:
            self.problem(
                path,
                "mode",
                f"op {path} starts round {self.round_index + 2}: every round runs in a phase of its own at "
                f"least, and the configured limit is {self.limits.max_phases} phases (submit the rest as "
                "another job); the ops from here on are not checked",
            )
            held.clear()  # what the unchecked ops would have loaded is not reported as never loaded
            raise _StopChecking
        # O(modes), at most max_phases times (checked above).
        self.round_index += 1
        self.clock = 0.0
        self.state[:] = [FRESH] * self.n_modes
        self.touched2[:] = [False] * self.n_modes
        self.loaded.clear()
        in_flight.clear()
        self.last_wait = None
        self.since_wait.clear()
        return True

    # --- gates ---------------------------------------------------------------------------------------

    def ps(self, index: int, path: str | int, op: PhaseShift, cond: If | None) -> None:
        """A phase shift; inside a conditional, a fast phase on a loaded photon (feed-forward)."""
        a = op.mode
        if cond is None and a < self.n_modes:
            # The common case, kept short: a photon already in flight in one pass.
            s = self.state[a]
            if s is FIRST_PASS or s is SECOND_PASS:
                last_on = self.last_on
                before = last_on.get(a)
                last_on[a] = index
                self.predecessors.append([] if before is None else [before])
                self.edges += before is not None
                stage: Pass
                if s is FIRST_PASS:
                    stage = 1
                else:
                    stage = 2
                    self.touched2[a] = True
                r = self.round_index
                self.contributions.append((r, r * self.n_modes + a, path, op, stage))
                return
        self._gate(index, path, op, cond)

    def bs(self, index: int, path: str | int, op: BeamSplitter | MziOp, cond: If | None) -> None:
        """A beam splitter (and an MZI, checked alike): two modes, one pass."""
        a, b = op.modes
        n = self.n_modes
        if cond is None and a != b and a < n and b < n:
            # The common case, kept short: two photons already in flight in the same pass.
            state = self.state
            sa = state[a]
            if sa is state[b] and (sa is FIRST_PASS or sa is SECOND_PASS):
                last_on = self.last_on
                pa, pb = last_on.get(a), last_on.get(b)
                if pa is None:
                    preds = [] if pb is None else [pb]
                elif pb is None or pb == pa:
                    preds = [pa]
                else:
                    preds = [pa, pb]
                last_on[a] = last_on[b] = index
                self.predecessors.append(preds)
                self.edges += len(preds)
                stage: Pass
                if sa is FIRST_PASS:
                    stage = 1
                else:
                    stage = 2
                    self.touched2[a] = self.touched2[b] = True
                key = self.round_index * n + a
                self.pairs.add((key, key - a + b))
                self.contributions.append((self.round_index, key, path, op, stage))
                return
        self._gate(index, path, op, cond)

    mzi = bs

    def unitary(self, index: int, path: str | int, op: UnitaryOp, cond: If | None) -> None:
        """Any unitary on its modes: square, the right size and unitary, checked before it acts."""
        modes = list(op.modes)
        self._record(index, modes, None, cond)
        if not self._well_formed(path, op, modes, cond):
            return
        wrong = _matrix_problem(op, self.device.modes)
        if wrong is not None:
            self.problem(path, *wrong)
            return
        matrix = op.matrix()
        error = float(np.abs(matrix.conj().T @ matrix - np.eye(len(op.modes))).max())
        if not error <= UNITARY_TOLERANCE:
            self.problem(path, "re", f"the matrix is not unitary: |U^dagger U - 1| reaches {error:.2e}")
            return
        self._act(path, op, modes, cond)

    def _gate(self, index: int, path: str | int, op: PhaseShift | BeamSplitter | MziOp, cond: If | None) -> None:
        modes = modes_of(op)
        self._record(index, modes, None, cond)
        if self._well_formed(path, op, modes, cond):
            self._act(path, op, modes, cond)

    def _act(self, path: str | int, op: Op, modes: list[int], cond: If | None) -> None:
        """A gate on modes in one pass: the modes' own states decide which, never other modes'.

        Light-free modes join the second pass only by meeting a loaded photon
        (or vacuum that met one).
        """
        state = self.state
        p1 = [q for q in modes if state[q] is FIRST_PASS]
        p2 = [q for q in modes if state[q] is SECOND_PASS]
        if p1 and p2:
            self.problem(
                path,
                "modes",
                f"modes {p1} are in the first pass and {p2} in the second (loaded from "
                "a delay line); a second-pass photon meets only other loaded photons and vacuum",
            )
            return
        stage: Pass = 2 if p2 else 1
        closed = _CLOSED_ALWAYS if stage == 2 else _CLOSED_IN_FIRST_PASS
        q = next((q for q in modes if state[q] in closed), None)
        if q is not None:
            why = closed[state[q]]
            if state[q] is EMPTIED:
                h = next((h for h in self.held.values() if h.mode == q), None)
                if h is not None:
                    why = (
                        f"is empty: its photon is in delay line {h.line!r} (op {h.path}); the first pass is "
                        "over for it, and only a load brings a photon back"
                    )
            self.problem(path, modes_key(op), f"mode {q} {why}")
            return
        if cond is not None and not self._feed_forward_allowed(path, modes[0]):  # a phase shift: one mode
            return
        now = FIRST_PASS if stage == 1 else SECOND_PASS
        for q in modes:
            state[q] = now
            self.in_flight.add(q)
            if stage == 2 and cond is None:
                self.touched2[q] = True
        r, n = self.round_index, self.n_modes
        self.contributions.append((r, (r * n + modes[0]), path, op if cond is None else (cond, op), stage))
        for q in modes[1:]:
            self.find.union((r * n + modes[0]), (r * n + q))
        if cond is not None:
            reg = self.registers.get(cond.register)
            if reg is not None:
                self.find.union((r * n + reg.modes[0]), (r * n + modes[0]))

    def _feed_forward_allowed(self, path: str | int, q: int) -> bool:
        """A conditional phase on mode q: on a loaded photon, at the second-pass inputs, after the latency."""
        loaded = self.loaded.get(q)
        if self.state[q] is not SECOND_PASS or loaded is None:
            self.problem(
                path,
                "mode",
                f"a conditional phase acts on a photon loaded from a delay line; mode {q} holds "
                "none (the device's fast phase shifters sit at the second-pass inputs)",
            )
            return False
        if self.touched2[q]:
            self.problem(
                path,
                "mode",
                f"mode {q} was acted on after its load; the fast phase shifters sit at the "
                "second-pass inputs: put the conditional right after the load",
            )
            return False
        waited, latency = loaded.stored_ns, self.ff_latency_ns
        if waited < latency:
            self.problem(  # about the conditional and the register it reads, not the phase inside
                enclosing(path),
                "register",
                f"needs feed-forward within {waited:g} ns of the measurement (the photon "
                f"waits {waited:g} ns in delay line {loaded.line!r}); the device's feed-forward takes "
                f"{latency:g} ns: add a wait of at least {latency - waited:g} ns before the load",
            )
            return False
        return True

    # --- delay lines and time ----------------------------------------------------------------------

    def store(self, index: int, path: str | int, op: Store, cond: If | None) -> None:
        """A first-pass photon goes into a delay line; its mode is empty from here on."""
        modes = [op.mode]
        self._record(index, modes, ("line", op.line), cond)
        self._read_clock(index)
        if not self._well_formed(path, op, modes, cond):
            return
        s = self.state[op.mode]
        if s is not FIRST_PASS:
            self.problem(path, "mode", f"mode {op.mode} {_NOT_STORABLE[s]}")
            return
        held = self.held
        if op.line in held:
            self.problem(
                path,
                "line",
                f"delay line {op.line!r} is used twice at once: it holds the photon stored at op "
                f"{held[op.line].path} until it is loaded",
            )
            return
        held[op.line] = _Held(op.line, op.mode, path, self.clock, index)
        self.state[op.mode] = EMPTIED
        self.in_flight.discard(op.mode)
        r, n = self.round_index, self.n_modes
        self.find.union((r * n + op.mode), ("line", r, op.line))
        self.contributions.append((r, (r * n + op.mode), path, op, 1))

    def load(self, index: int, path: str | int, op: Load, cond: If | None) -> None:
        """The photon a delay line holds comes back into an empty mode, within the line's window."""
        modes = [op.mode]
        self._record(index, modes, ("line", op.line), cond)
        self._read_clock(index)
        if not self._well_formed(path, op, modes, cond):
            return
        h = self.held.get(op.line)
        if h is None:
            self.problem(
                path,
                "line",
                f"delay line {op.line!r} holds no photon here (nothing stored in it, or it was loaded already)",
            )
            return
        s = self.state[op.mode]
        if s is DONE:
            self.problem(
                path,
                "mode",
                f"mode {op.mode} was measured in the second pass: its detector is used in this "
                "shot; load into another mode",
            )
            return
        if s is FIRST_PASS or s is SECOND_PASS:
            self.problem(path, "mode", f"mode {op.mode} is not empty: a photon is loaded only into an empty mode")
            return
        stored_ns = self.clock - h.at_ns
        if stored_ns > self.limit_ns:
            self._too_late(path, op, h, stored_ns)
            del self.held[op.line]  # reported once, not again as "never loaded"
            return
        del self.held[op.line]
        rounds = max(1, math.ceil(stored_ns / self.loop_ns - 1e-9))
        loaded = self.loaded[op.mode] = Loaded(op.mode, op.line, h.path, path, stored_ns, rounds, h.mode)
        self.state[op.mode] = SECOND_PASS
        self.in_flight.add(op.mode)
        self.touched2[op.mode] = False
        r, n = self.round_index, self.n_modes
        self.find.union(("line", r, op.line), (r * n + op.mode))
        self.contributions.append((r, (r * n + op.mode), path, loaded, 2))
        self.load_limits[index] = (h.index, self.limit_ns)

    def _too_late(self, path: str | int, op: Load, h: _Held, stored_ns: float) -> None:
        limit_ns = self.limit_ns
        self.problem(
            path,
            "line",
            f"the photon stored in delay line {op.line!r} at op {h.path} is loaded after "
            f"{stored_ns:g} ns; a delay line keeps it {self.window_ns:g} ns ({self.device.delay_lines.max_rounds} "
            f"round trips) less a {self.limits.coherence_margin:.0%} safety margin ({limit_ns:g} ns): "
            f"{stored_ns - limit_ns:g} ns too late",
        )

    def wait(self, index: int, path: str | int, op: Wait, cond: If | None) -> None:
        """Time passes for what was stored: after the last wait and what came since."""
        self._record(index, [], None, cond)
        preds = self.predecessors[index]
        for p in ([] if self.last_wait is None else [self.last_wait]) + self.since_wait:
            if p not in preds:
                preds.append(p)
                self.edges += 1
        self.last_wait = index
        self.since_wait.clear()
        if not self._well_formed(path, op, [], cond):  # never conditional: a conditional block holds phase shifts
            return
        if op.ns > self.limits.max_wait_ns:
            self.problem(
                path,
                "ns",
                f"a wait of {op.ns:g} ns is more than the configured limit of {self.limits.max_wait_ns:g} ns "
                f"(a delay line keeps a photon {self.window_ns:g} ns)",
            )
            return
        self.clock += op.ns

    # --- measurement and feed-forward --------------------------------------------------------------

    def measure(self, index: int, path: str | int, op: Measure, cond: If | None) -> None:
        """Modes of one pass are detected into a register, written once."""
        modes = list(op.modes)
        self._record(index, modes, ("r", op.into), cond)
        if not self._well_formed(path, op, modes, cond):
            return
        state = self.state
        q = next((q for q in op.modes if state[q] in _NOT_MEASURABLE), None)
        if q is not None:
            self.problem(path, "modes", f"mode {q} is {_NOT_MEASURABLE[state[q]]}")
            return
        p2 = any(state[q] is SECOND_PASS for q in op.modes)
        if p2 and any(state[q] is FIRST_PASS for q in op.modes):
            self.problem(path, "modes", "a register is measured within one pass: these modes are in both")
            return
        if op.into in self.registers:
            first = self.registers[op.into].path
            self.problem(path, "into", f"register {op.into!r} is written twice (first at op {first})")
            return
        self._count_bins(path, op)
        stage: Pass = 2 if p2 else 1
        r, n = self.round_index, self.n_modes
        self.registers[op.into] = Register(op.into, r, stage, list(op.modes), path)
        now = MEASURED if stage == 1 else DONE
        for q in op.modes:
            state[q] = now
            self.in_flight.discard(q)
            self.find.union((r * n + op.modes[0]), (r * n + q))
        self.contributions.append((r, (r * n + op.modes[0]), path, op, stage))

    def _count_bins(self, path: str | int, op: Measure) -> None:
        """A register's histogram (2^bits bins), and all registers' so far, within the limits."""
        limits = self.limits
        bits = len(op.modes)
        if bits > limits.max_register_bits:
            self.problem(
                path,
                "modes",
                f"register {op.into!r} would have {bits} bits, and its histogram 2^{bits} bins; the configured "
                f"limit is {limits.max_register_bits} bits: measure into several registers",
            )
            return
        self.result_bins += 2**bits
        if self.result_bins > limits.max_result_bins >= self.result_bins - 2**bits:
            self.problem(
                path,
                "modes",
                f"the registers measured up to here have {self.result_bins:,} histogram bins (2^bits each); the "
                f"configured limit is {limits.max_result_bins:,}",
            )

    def if_(self, index: int, path: str | int, op: If, cond: If | None) -> None:
        """A conditional reads a first-pass register of this shot (its phase shifts come as ops of their own)."""
        self._record(index, [], ("r", op.register), cond)
        if not self._well_formed(path, op, [], cond):
            return
        reg = self.registers.get(op.register)
        if reg is None:
            self.problem(
                path,
                "register",
                f"register {op.register!r} is read before it is written (no measure "
                f"into {op.register!r} comes earlier)",
            )
        elif reg.round != self.round_index:
            self.problem(
                path,
                "register",
                f"register {op.register!r} was measured in an earlier shot (op {reg.path}); "
                "feed-forward acts within the shot that measured it",
            )
        elif reg.pass_ != 1:
            self.problem(
                path,
                "register",
                f"register {op.register!r} is measured in the second pass (op {reg.path}); "
                "the device's feed-forward reads first-pass detections only",
            )
        elif op.equals >= 2 ** len(reg.modes):
            self.problem(
                path,
                "equals",
                f"register {op.register!r} has {len(reg.modes)} bits; it never reads {number_text(op.equals)}",
            )
