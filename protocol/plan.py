"""Execution plans: what the scheduler hands the executor.

A plan is a sequence of *phases*. A phase is one device configuration and what
happens in it: the mesh's target phases (radians per heater; the executor turns
them into volts through the calibration), the inputs, the delay-line and
feed-forward program, the shots, and which detector columns hold which
register. Within one shot the device makes a first pass through the mesh,
sends stored photons round their delay lines, and makes a second pass with
the loaded photons, after fast feed-forward phases chosen by the first pass's
clicks; each *branch* says which phases follow which outcome.

Phases depend on earlier phases that use the same logical modes (the
circuit's order); independent phases may be reordered by a dynamic strategy.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .hal import InputSetting, MemorySlot


class _S(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every part of a plan: frozen, strict about unknown fields."""


class Placement(_S, frozen=True, kw_only=True):
    """Logical mode ``logical`` of pass ``pass_`` sits on physical mode ``physical``."""

    logical: int
    physical: int
    pass_: Literal[1, 2] = msgspec.field(name="pass")


class RegisterRead(_S, frozen=True, kw_only=True):
    """Register ``name`` is the clicks in ``columns`` of a shot's pattern (first column most significant)."""

    name: str
    columns: list[int]
    modes: list[int]
    """The logical modes measured, in the register's bit order."""
    pass_: Literal[1, 2] = msgspec.field(name="pass")


class Branch(_S, frozen=True, kw_only=True):
    """When the feed-forward modes click as ``pattern``: registers read ``outcome``, these fast phases are set."""

    pattern: str
    outcome: dict[str, int]
    phases: dict[int, float]
    """Physical second-pass input mode -> radians."""


class Deadline(_S, frozen=True, kw_only=True):
    """A stored photon's coherence window, and how much of it the plan leaves unused."""

    slot: str
    physical_slot: int
    store_op: str
    load_op: str
    stored_ns: float
    limit_ns: float
    """The delay line's window less the safety margin."""
    slack_ns: float
    rounds: int


class Resources(_S, frozen=True, kw_only=True):
    modes: list[int]
    detectors: list[int]
    slots: list[int]
    ff_shifters: int


class Phase(_S, frozen=True, kw_only=True):
    index: int
    round: int
    """Which independent experiment of the circuit (a new round starts when a used mode gets a new input)."""
    ops: list[str]
    """Index paths of the circuit ops this phase carries out; runs of top-level ops as ``"a-b"``."""
    depends_on: list[int]
    mesh_phases: list[float]
    """Target phase per heater (m**2, numbered as in `protocol.mesh`); empty when ``volts`` is given."""
    volts: list[float] | None = None
    """Explicit heater voltages, for procedures (calibration sweeps): no calibration is applied."""
    readout: Literal["shots", "powers"] = "shots"
    """``powers``: read the photodiodes (coherent light) instead of firing shots."""
    inputs: list[InputSetting]
    memory: list[MemorySlot]
    ff_modes: list[int]
    branches: list[Branch]
    registers: list[RegisterRead]
    placement: list[Placement]
    resources: Resources
    shots: int
    width: int
    """Columns of this phase's shot patterns: the device's modes, twice that with a second pass."""
    settle_s: float
    duration_s: float
    """Expected: settling, shots at the device's rate, and readout."""
    deadlines: list[Deadline]


class PlanMetrics(_S, frozen=True, kw_only=True):
    total_duration_s: float
    phases: int
    ops: int
    min_slack_ns: float | None
    """Least slack before any stored photon's deadline; None without memory."""
    compile_s: float
    reconfigurations: int


class Plan(_S, frozen=True, kw_only=True):
    id: str
    """A digest of circuit, device, calibration version and strategy: equal plans have equal ids."""
    circuit: str
    """The circuit's digest (`protocol.circuit.circuit_hash`)."""
    device: str
    identity: str
    calibration: int | None
    strategy: str
    kind: Literal["circuit", "procedure"] = "circuit"
    """``procedure``: made by an actor (calibration), not compiled from a circuit."""
    modes: int
    """The device's mode count; a pattern has ``modes`` columns per pass."""
    phases: list[Phase]
    metrics: PlanMetrics
