"""Components: the operations of one round that must share a shot, and whether each fits the device.

The analysis (`_analyse`) joins the modes, delay lines and registers that
operations share in a union-find and records what each operation contributes;
`group` turns that into components in circuit order, and `check_fit` names
the op at which one shot of a component needs more than the device has.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from protocol.circuit import BeamSplitter, CircuitProblem, Input, Measure, MziOp, Op, PhaseShift, Store, UnitaryOp
from protocol.photonica import DeviceDescription
from protocol.plan import Pass

from ._limits import Health, Limits
from ._ops import enclosing, modes_key, modes_of, power_of_two


@dataclass
class Register:
    """A measurement's register: which round and pass measured which logical modes, at which op."""

    name: str
    round: int
    pass_: Pass
    modes: list[int]
    path: str | int


@dataclass
class Loaded:
    """A photon brought back from a delay line into a second-pass mode."""

    mode: int
    line: str
    store_path: str | int
    load_path: str | int
    stored_ns: float
    rounds: int
    """Round trips of the delay line it waited."""
    from_mode: int
    """The first-pass mode it was stored from."""


Contribution = tuple[int, Any, "str | int", Any, Pass]
"""What one op adds to its component: (round, union-find key, op path, what it adds, pass).

What it adds is the op itself, a `Loaded` for a load, or ``(If, PhaseShift)``
for a conditional phase.
"""


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
    loads: dict[int, Loaded] = field(default_factory=dict)
    """Second-pass mode -> what was loaded into it."""
    registers: list[Register] = field(default_factory=list)
    conditions: list[tuple[str, int, int, float]] = field(default_factory=list)
    """(register, value, second-pass mode, phase)."""
    added: list[tuple[str | int, str]] = field(default_factory=list)
    """(op path, key) of the op that brought each of its modes in, pass by pass, in circuit order."""
    detected_at: list[str | int] = field(default_factory=list)
    """The measurement of each detection, in circuit order."""
    condition_paths: list[str | int] = field(default_factory=list)
    """The conditional phase shift of each condition."""

    def passes(self) -> tuple[tuple[Pass, list[int]], tuple[Pass, list[int]]]:
        """Its logical modes in each pass through the mesh: (1, first pass), (2, second pass)."""
        return ((1, self.pass1), (2, self.pass2))

    @property
    def ff_modes(self) -> list[int]:
        return sorted({mode for _, _, mode, _ in self.conditions})

    @functools.cached_property
    def ff_bits(self) -> int:
        """Register bits its feed-forward reads: its phase plans 2^bits branches (with its neighbours')."""
        read = {register for register, *_ in self.conditions}
        return sum(len(r.modes) for r in self.registers if r.name in read)


class UnionFind:
    """Union-find over small integer keys (and tuples for delay lines), with path halving."""

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


def group(contributions: list[Contribution], find: UnionFind) -> list[Component]:
    """The components, in the order their first op comes, each with what its ops contributed."""
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
        elif kind is tuple:  # a conditional phase: (If, PhaseShift)
            cond, ps = op
            component.conditions.append((cond.register, cond.equals, ps.mode, ps.phi))
            component.condition_paths.append(path)
        elif kind is Loaded:
            component.loads[op.mode] = op
            if op.mode not in component.seen2:
                component.pass2.append(op.mode)
                component.seen2.add(op.mode)
                component.added.append((path, "mode"))
        else:
            _add(component, round_index, path, op, stage)
    return order


def _add(component: Component, round_index: int, path: str | int, op: Op, stage: Pass) -> None:
    """An input, a store, a unitary or a measurement joins its component."""
    modes = modes_of(op)
    seen, target = (component.seen2, component.pass2) if stage == 2 else (component.seen1, component.pass1)
    if isinstance(op, Store):
        seen, target = component.seen1, component.pass1
    for q in modes:
        if q not in seen:
            seen.add(q)
            target.append(q)
            component.added.append((path, modes_key(op)))
    if isinstance(op, Input):
        component.inputs[op.mode] = op
    elif isinstance(op, UnitaryOp):
        component.gates.append((stage, modes, op))
    elif isinstance(op, Measure):
        for q in op.modes:
            if (stage, q) not in component.measured:
                component.measured.add((stage, q))
                component.detected_at.append(path)
        component.registers.append(Register(op.into, round_index, stage, list(op.modes), path))


def check_fit(
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
        _check_feed_forward(c, device.feedforward.phase_shifters, limits.max_ff_bits, problems)
        if len(c.detected_at) > good_detectors:
            problem(
                c.detected_at[max(good_detectors, 0)],
                "modes",
                f"{len(c.detected_at)} detections in one shot (from op {first} on); the device has {good_detectors} "
                "working detectors, and this measurement needs more",
            )


def _check_feed_forward(c: Component, shifters: int, max_ff_bits: int, problems: list[CircuitProblem]) -> None:
    """A component's fast phase shifters and the register bits its feed-forward reads, each at its op."""
    first = str(c.ops[0])
    targets: list[int] = []
    read: list[str] = []
    bits = 0
    for (register, _, mode, _), path in zip(c.conditions, c.condition_paths, strict=True):
        if mode not in targets:
            targets.append(mode)
            if len(targets) == shifters + 1:
                problems.append(
                    CircuitProblem(
                        op=str(path),
                        field="mode",
                        message=f"feed-forward on {len(c.ff_modes)} modes in one shot (from op {first} on); the "
                        f"device has {shifters} fast phase shifters, and this conditional phase needs one more",
                    )
                )
        if register not in read:
            read.append(register)
            width = next((len(r.modes) for r in c.registers if r.name == register), 0)  # 0: refused already
            if bits <= max_ff_bits < bits + width:
                total = sum(len(r.modes) for r in c.registers if r.name in {reg for reg, *_ in c.conditions})
                problems.append(
                    CircuitProblem(
                        op=enclosing(path),
                        field="register",
                        message=f"feed-forward reads {total} register bits in one shot (from op {first} on; "
                        f"{power_of_two(total)} branches to plan); the configured limit is {max_ff_bits} bits, "
                        f"and register {register!r} goes beyond it",
                    )
                )
            bits += width
