"""Components into phases (first fit, circuit order), and each phase's logical modes onto physical ones.

A phase is one device configuration: the components of one round that fit
the chip together. Packing is deterministic (the same circuit, device and
health give the same phases); `check_plan_size` refuses a plan with more
phases or feed-forward branches than the limits allow, at the op that goes
beyond them; `place` picks the physical modes and delay lines of one phase.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.circuit import CircuitProblem
from protocol.photonica import DeviceDescription

from ._components import Component
from ._limits import Health, Limits
from ._ops import enclosing

Capacity = tuple[int, int, int, int]
"""What one phase holds: physical modes, delay lines, fast phase shifters, feed-forward bits."""


@dataclass
class PhaseBuild:
    """The components packed into one phase, and what of the device they use together."""

    round: int
    components: list[Component] = field(default_factory=list)
    modes: int = 0
    lines: int = 0
    ff: int = 0
    bits: int = 0
    """Register bits its feed-forward reads: it plans 2^bits branches."""

    def fits(self, c: Component, capacity: Capacity) -> bool:
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


def pack(components: list[Component], device: DeviceDescription, health: Health, limits: Limits) -> list[PhaseBuild]:
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
    phases: list[PhaseBuild] = []
    open_in_round: list[PhaseBuild] = []
    current_round = -1
    for c in components:
        if c.round != current_round:
            current_round, open_in_round = c.round, []
        target = next((p for p in open_in_round if p.fits(c, capacity)), None)
        if target is None:
            if len(phases) > limits.max_phases:
                break
            target = PhaseBuild(round=c.round)
            open_in_round.append(target)
            phases.append(target)
        target.add(c)
    return phases


def check_plan_size(builds: list[PhaseBuild], limits: Limits, problems: list[CircuitProblem]) -> None:
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
                    op=enclosing(first.condition_paths[0]),
                    field="register",
                    message=(
                        f"the plan needs {branches:,} feed-forward branches up to the phase of this conditional "
                        f"(2^bits read, per phase); the configured limit is {limits.max_branches:,}"
                    ),
                )
            )
            return


ModePlaces = dict[tuple[int, int, int], int]
"""(component, pass, logical mode) -> physical mode."""

LinePlaces = dict[tuple[int, str, "str | int"], int]
"""(component, delay line's name, op that stored into it) -> physical delay line."""


def place(build: PhaseBuild, device: DeviceDescription, health: Health) -> tuple[ModePlaces, LinePlaces]:
    """Physical modes for (component, pass, logical mode), measured ones on working detectors; physical delay lines."""
    good = [q for q in range(device.modes) if q not in health.modes]
    with_detector = [q for q in good if q not in health.detectors]
    without = [q for q in good if q in health.detectors]
    placement: ModePlaces = {}
    for ci, c in enumerate(build.components):
        for stage, logical in c.passes():
            for q in logical:
                pool = with_detector if (stage, q) in c.measured or not without else without
                if not pool:
                    pool = with_detector
                placement[(ci, stage, q)] = pool.pop(0)
    lines = [n for n in range(device.delay_lines.count) if n not in health.delay_lines]
    line_of: LinePlaces = {}
    for ci, c in enumerate(build.components):
        for load in c.loads.values():
            line_of[(ci, load.line, load.store_path)] = lines.pop(0)
    return placement, line_of
