"""Every invariant a plan must keep, checked on its own, independently of how it was made.

The scheduler checks each plan it emits; tests check random circuits' plans;
the executor may check what it is given.
"""

from __future__ import annotations

import math
import re

from protocol import AwenError, ErrorCode
from protocol.circuit import clip, expand_paths
from protocol.photonica import DeviceDescription
from protocol.plan import Phase, Plan

MAX_NAMED_OPS = 10_000_000
"""Operations a plan may name, all phases together: its op ranges ("0-99") are listed one by one only within this.

(Not `protocol.plan.MAX_PLAN_OPS`, which bounds the paths one phase lists: a range is one path.)
"""

SHOWN_PROBLEMS = 20
"""Broken invariants a refusal spells out (a submitted plan is a client's: it may break millions)."""


class PlanInvalid(AwenError):
    """A plan breaks an invariant; ``problems`` lists each."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = "; ".join(problems[:SHOWN_PROBLEMS])
        more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        super().__init__(f"the plan breaks {len(problems)} invariant(s): {shown}{more}")


def plan_problems(plan: Plan, device: DeviceDescription, *, circuit_ops: list[str] | None = None) -> list[str]:
    """What is wrong with ``plan`` on ``device`` (empty: nothing).

    Checks: phases numbered in order and depending only on earlier phases;
    no physical mode, detector column, delay line or feed-forward shifter used
    twice in a phase and none beyond the device; inputs, routes and registers
    on modes the phase placed; every stored photon back within its window (and
    the rounds the delay line is programmed for); every feed-forward outcome
    planned exactly once; mesh phases for every heater; and, if
    ``circuit_ops`` is given, every operation carried out by exactly one phase.
    """
    problems: list[str] = []
    ops = _OpsCarried()
    for position, phase in enumerate(plan.phases):
        problems += _PhaseCheck(phase, position, device).problems()
        if not ops.add(phase, problems):
            break
    if circuit_ops is not None:
        missing = [op for op in circuit_ops if op not in ops.seen]
        if missing:
            problems.append(f"ops {missing[:5]} are in no phase")
    total = sum(p.duration_s for p in plan.phases)
    if not math.isclose(total, plan.metrics.total_duration_s, rel_tol=1e-9):
        problems.append(f"the metrics say {plan.metrics.total_duration_s} s, the phases add up to {total} s")
    return problems


class _PhaseCheck:
    """The invariants of one phase, a method per part of it, in the order `problems` reports them."""

    def __init__(self, phase: Phase, position: int, device: DeviceDescription) -> None:
        self.phase = phase
        self.position = position
        self.device = device
        self.m = device.modes
        self.where = f"phase {phase.index}"
        self.pass1 = {p.physical for p in phase.placement if p.pass_ == 1}
        self.pass2 = {p.physical for p in phase.placement if p.pass_ == 2}
        self.columns = [c for r in phase.registers for c in r.columns]
        self.found: list[str] = []

    def problems(self) -> list[str]:
        self.order()
        self.settings()
        self.placement()
        self.registers()
        self.delay_lines()
        self.feed_forward()
        if self.phase.shots < 1 or self.phase.duration_s <= 0:
            self.found.append(f"{self.where} has {self.phase.shots} shots and a duration of {self.phase.duration_s} s")
        return self.found

    def order(self) -> None:
        """Numbered by its position; depending on earlier phases only."""
        where, phase, position = self.where, self.phase, self.position
        if phase.index != position:
            self.found.append(f"{where} is at position {position}")
        for dep in phase.depends_on:
            if not 0 <= dep < position:
                self.found.append(f"{where} depends on phase {dep}, which does not come before it")

    def settings(self) -> None:
        """A finite phase or voltage for every heater of the mesh, and not both."""
        where, phase, m = self.where, self.phase, self.m
        settings = phase.mesh_phases if phase.volts is None else phase.volts
        what = "heater phases" if phase.volts is None else "heater voltages"
        if len(settings) != m * m:
            self.found.append(f"{where} sets {len(settings)} {what}; the mesh has {m * m}")
        if any(not math.isfinite(x) for x in settings):
            self.found.append(f"{where} has one of its {what} that is not a finite number")
        if phase.volts is not None and phase.mesh_phases:
            self.found.append(f"{where} gives both target phases and voltages")

    def placement(self) -> None:
        """Each logical mode on a physical mode of its own; inputs on first-pass modes."""
        where, m = self.where, self.m
        physical = [p.physical for p in self.phase.placement]
        if len(set(physical)) != len(physical):
            self.found.append(f"{where} places two logical modes on one physical mode")
        if any(not 0 <= q < m for q in physical):
            self.found.append(f"{where} places a mode outside the device's {m} modes")
        for inp in self.phase.inputs:
            if inp.mode not in self.pass1:
                self.found.append(f"{where} sets an input on mode {inp.mode}, which no first-pass mode occupies")

    def registers(self) -> None:
        """Each detector column read into one register at most, from a mode placed in that pass."""
        where, phase, m = self.where, self.phase, self.m
        if len(set(self.columns)) != len(self.columns):
            self.found.append(f"{where} reads one detector column into two registers")
        for r in phase.registers:
            for c in r.columns:
                if not 0 <= c < phase.width:
                    self.found.append(
                        f"{where} reads column {c} of a {phase.width}-column pattern into {clip(r.name)!r}"
                    )
                mode = c - m if c >= m else c
                if mode not in (self.pass2 if c >= m else self.pass1):
                    self.found.append(
                        f"{where} reads register {clip(r.name)!r} from a mode it did not place in that pass"
                    )

    def delay_lines(self) -> None:
        """Each delay line used once, between placed modes, its photon back within the window."""
        where, phase, device = self.where, self.phase, self.device
        window_ns = device.delay_lines.max_rounds * device.delay_lines.loop_s * 1e9
        lines = [r.line for r in phase.delay_lines]
        if len(set(lines)) != len(lines):
            self.found.append(f"{where} uses delay line {lines[0]} twice")
        if any(not 0 <= n < device.delay_lines.count for n in lines):
            self.found.append(f"{where} uses a delay line the device does not have")
        if len(phase.delay_lines) != len(phase.deadlines):
            self.found.append(
                f"{where} stores {len(phase.delay_lines)} photons but tracks {len(phase.deadlines)} deadlines"
            )
        for route in phase.delay_lines:
            if route.out_mode not in self.pass1 or route.in_mode not in self.pass2:
                self.found.append(f"{where} routes delay line {route.line} between modes it did not place")
            if route.rounds > device.delay_lines.max_rounds:
                self.found.append(
                    f"{where} keeps a photon {route.rounds} round trips; the window is {device.delay_lines.max_rounds}"
                )
        if phase.delay_lines and phase.width != 2 * self.m:
            self.found.append(f"{where} has a second pass but {phase.width}-column patterns")
        for d in phase.deadlines:
            if d.stored_ns > d.limit_ns or d.limit_ns > window_ns or d.slack_ns < 0:
                late = -d.slack_ns
                self.found.append(
                    f"{where}: the photon in delay line {clip(d.line)!r} misses its deadline by {late:g} ns"
                )

    def feed_forward(self) -> None:
        """Every outcome of the bits read planned once; fast phases on loaded photons that waited for them."""
        where, phase, device = self.where, self.phase, self.device
        if not phase.ff_modes:
            if phase.branches:
                self.found.append(f"{where} has branches but no feed-forward modes")
            return
        if len(phase.ff_modes) > device.feedforward.phase_shifters + len(self.columns):
            self.found.append(f"{where} reads too many feed-forward modes")
        patterns = [b.pattern for b in phase.branches]
        bits = len(phase.ff_modes)
        if len(patterns) != 2**bits:  # first: the outcomes are enumerated only if the plan lists them all
            outcomes = f"{2**bits}" if bits < 64 else f"2^{bits}"
            self.found.append(f"{where} plans {len(patterns)} branches for {outcomes} outcomes")
        elif sorted(patterns) != [format(i, f"0{bits}b") for i in range(2**bits)]:
            self.found.append(f"{where} plans branches that are not every outcome of its {bits} bits once")
        targets = {q for b in phase.branches for q in b.phases}
        if not targets <= self.pass2:
            self.found.append(f"{where} sets fast phases on modes that carry no loaded photon")
        if len(targets) > device.feedforward.phase_shifters:
            self.found.append(
                f"{where} needs {len(targets)} fast phase shifters; the device has {device.feedforward.phase_shifters}"
            )
        waited = {d.physical_line: d.stored_ns for d in phase.deadlines}
        for route in phase.delay_lines:
            if route.in_mode in targets and waited.get(route.line, 0.0) < device.feedforward.latency_s * 1e9:
                self.found.append(
                    f"{where} sets a fast phase on the photon from delay line {route.line}, which does not wait "
                    "for the feed-forward"
                )


class _OpsCarried:
    """Which phase carries each operation the plan names: each once, and no more than `MAX_NAMED_OPS` in all."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.listed = 0

    def add(self, phase: Phase, problems: list[str]) -> bool:
        """Count the phase's operations, adding what is wrong to ``problems``; False: too many to list, stop."""
        where = f"phase {phase.index}"
        named = _named_ops(phase.ops)
        if isinstance(named, str):
            problems.append(f"{where} {named}")
            return True
        self.listed += named
        if self.listed > MAX_NAMED_OPS:
            problems.append(f"{where}: the plan names more than {MAX_NAMED_OPS:,} operations")
            return False
        for op in expand_paths(phase.ops):
            if op in self.seen:
                problems.append(f"op {op} is carried out by phases {self.seen[op]} and {phase.index}")
            self.seen[op] = phase.index
        return True


_PATH = re.compile(r"\d+(\.ops\.\d+)*")


def _named_ops(paths: list[str]) -> int | str:
    """How many operations ``paths`` name (a range ``a-b`` names b - a + 1), or what is wrong with one.

    Counted before `expand_paths` lists them: a plan submitted as a procedure
    is a client's, and ``"0-999999999999"`` would list a trillion strings.
    """
    count = 0
    for p in paths:
        first, dash, last = p.partition("-")
        if dash:
            if not (first.isdigit() and last.isdigit() and len(last) < 19 and int(first) <= int(last)):
                return f"names {clip(p)!r}: not an op path or a range a-b of them"
            count += int(last) - int(first) + 1
        elif _PATH.fullmatch(p):
            count += 1
        else:
            return f"names {clip(p)!r}: not an op path or a range a-b of them"
    return count


def validate_plan(plan: Plan, device: DeviceDescription, *, circuit_ops: list[str] | None = None) -> None:
    """Raise `PlanInvalid` listing every broken invariant."""
    problems = plan_problems(plan, device, circuit_ops=circuit_ops)
    if problems:
        raise PlanInvalid(problems)
