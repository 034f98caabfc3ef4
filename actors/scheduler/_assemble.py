"""The plan's phases from the packed components: placement, unitary, delay lines, registers, branches.

Each phase is built on its own (`_Assembler.phase`); the mesh phases of all
of them are decomposed at the end, together (`decompose`), since phases
often repeat a configuration and sizes batch well.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import numpy as np

from protocol.circuit import Circuit, compress_paths
from protocol.hal import DelayRoute, InputSetting
from protocol.photonica import DeviceDescription
from protocol.plan import Deadline, Phase, Placement, RegisterRead, Resources

from ._analyse import Analysis
from ._branches import Condition, branches
from ._components import Component
from ._limits import Health, Limits
from ._pack import LinePlaces, ModePlaces, PhaseBuild, pack, place
from ._unitary import Block, compose, decompose


def build_phases(
    analysis: Analysis, circuit: Circuit, device: DeviceDescription, limits: Limits, health: Health
) -> list[Phase]:
    """Every phase of the plan, in order, with its mesh phases."""
    builds = analysis.builds if analysis.builds is not None else pack(analysis.components, device, health, limits)
    assembler = _Assembler(circuit, device, limits, health, _block_unitaries(analysis.components))
    phases: list[Phase] = []
    unitaries: list[np.ndarray] = []
    for index, build in enumerate(builds):
        phase, u = assembler.phase(index, build)
        phases.append(phase)
        unitaries.append(u)
    settings = decompose(unitaries, device.modes)
    return [msgspec.structs.replace(p, mesh_phases=mesh) for p, mesh in zip(phases, settings, strict=True)]


def _block_unitaries(components: list[Component]) -> dict[tuple[int, int], np.ndarray]:
    """(id of component, pass) -> the unitary of its gates in that pass, on its logical modes; all at once."""
    blocks: list[Block] = []
    keys: list[tuple[int, int]] = []
    for c in components:
        for stage, logical in c.passes():
            if logical and c.gates:
                blocks.append((logical, c.gates, stage))
                keys.append((id(c), stage))
    return dict(zip(keys, compose(blocks), strict=True))


@dataclass
class _Parts:
    """What one phase's components add up to, as they are placed one by one."""

    u: np.ndarray
    ops: list[str | int] = field(default_factory=list)
    placement: list[Placement] = field(default_factory=list)
    depends: set[int] = field(default_factory=set)
    inputs: list[InputSetting] = field(default_factory=list)
    routes: list[DelayRoute] = field(default_factory=list)
    deadlines: list[Deadline] = field(default_factory=list)
    registers: list[RegisterRead] = field(default_factory=list)
    register_bits: dict[str, list[int]] = field(default_factory=dict)
    """Register -> the physical modes whose clicks it reads (feed-forward's view)."""
    conditions: list[Condition] = field(default_factory=list)


class _Assembler:
    """Builds phases one after another; remembers which phase last used each logical mode (``depends_on``)."""

    def __init__(
        self,
        circuit: Circuit,
        device: DeviceDescription,
        limits: Limits,
        health: Health,
        unitaries: dict[tuple[int, int], np.ndarray],
    ) -> None:
        self.shots = circuit.shots
        self.device = device
        self.health = health
        self.unitaries = unitaries
        self.settle_s = device.heaters.settle_s * limits.settle_factor
        self.duration_s = self.settle_s + self.shots / device.shot_rate_hz + self.shots * limits.readout_s_per_shot
        window = device.delay_lines.max_rounds * device.delay_lines.loop_s * 1e9
        self.limit_ns = window * (1 - limits.coherence_margin)
        self.last_phase_of_mode: dict[int, int] = {}

    def phase(self, index: int, build: PhaseBuild) -> tuple[Phase, np.ndarray]:
        """One phase (its mesh phases still empty) and the unitary its mesh is to be set to."""
        placement, line_of = place(build, self.device, self.health)
        top = max(placement.values()) + 1 if placement else 1
        parts = _Parts(u=np.eye(top, dtype=np.complex128))
        for ci, c in enumerate(build.components):
            parts.ops.extend(c.ops)
            self._place(ci, c, placement, parts)
            self._delay_lines(ci, c, placement, line_of, parts)
            self._registers(ci, c, placement, parts)
            parts.conditions.extend((r, v, placement[(ci, 2, q)], phi) for r, v, q, phi in c.conditions)
        for p in parts.placement:
            self.last_phase_of_mode[p.logical] = index
        ff_modes, planned = branches(parts.conditions, parts.register_bits)
        m = self.device.modes
        phase = Phase(
            index=index,
            round=build.round,
            ops=compress_paths(parts.ops),
            depends_on=sorted(parts.depends),
            mesh_phases=[],  # filled in by `build_phases`, every phase's unitary decomposed at once
            inputs=sorted(parts.inputs, key=lambda i: i.mode),
            delay_lines=parts.routes,
            ff_modes=ff_modes,
            branches=planned,
            registers=parts.registers,
            placement=parts.placement,
            resources=Resources(
                modes=sorted(p.physical for p in parts.placement),
                detectors=sorted({c for r in parts.registers for c in r.columns}),
                delay_lines=sorted(r.line for r in parts.routes),
                ff_shifters=len({q for _, _, q, _ in parts.conditions}),
            ),
            shots=self.shots,
            width=2 * m if parts.routes else m,
            settle_s=self.settle_s,
            duration_s=self.duration_s,
            deadlines=parts.deadlines,
        )
        return phase, parts.u

    def _place(self, ci: int, c: Component, placement: ModePlaces, parts: _Parts) -> None:
        """The component's modes where `place` put them: its inputs there, its unitaries on those rows."""
        for stage, logical in c.passes():
            for q in logical:
                parts.placement.append(Placement(logical=q, physical=placement[(ci, stage, q)], pass_=stage))
                if q in self.last_phase_of_mode:
                    parts.depends.add(self.last_phase_of_mode[q])
        for q, inp in c.inputs.items():
            parts.inputs.append(
                InputSetting(mode=placement[(ci, 1, q)], state=inp.state, power_w=inp.power_w, phase_rad=inp.phase)
            )
        for stage, logical in c.passes():
            if logical and c.gates:
                rows = [placement[(ci, stage, q)] for q in logical]
                parts.u[np.ix_(rows, rows)] = self.unitaries[(id(c), stage)]

    def _delay_lines(self, ci: int, c: Component, placement: ModePlaces, line_of: LinePlaces, parts: _Parts) -> None:
        """Each loaded photon's route (out of the first pass, into the second) and its deadline."""
        limit = self.limit_ns
        for q, load in c.loads.items():
            physical_line = line_of[(ci, load.line, load.store_path)]
            parts.routes.append(
                DelayRoute(
                    line=physical_line,
                    out_mode=placement[(ci, 1, load.from_mode)],
                    in_mode=placement[(ci, 2, q)],
                    rounds=load.rounds,
                )
            )
            parts.deadlines.append(
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

    def _registers(self, ci: int, c: Component, placement: ModePlaces, parts: _Parts) -> None:
        """Which columns of a shot's pattern hold each register (a second-pass column is ``modes + mode``)."""
        m = self.device.modes
        for reg in c.registers:
            columns = [placement[(ci, reg.pass_, q)] + (m if reg.pass_ == 2 else 0) for q in reg.modes]
            parts.registers.append(RegisterRead(name=reg.name, columns=columns, modes=reg.modes, pass_=reg.pass_))
            parts.register_bits[reg.name] = [placement[(ci, reg.pass_, q)] for q in reg.modes]
