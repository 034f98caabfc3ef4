"""A job's results: which slots the executor writes, what each holds, and how a reader names them.

The executor writes a job's results into the memory actor's slots; ``awen
run``, the calibration actor, tools and tests read them back. This module is
what both sides agree on (decision 0013), so that neither builds or parses a
slot name by hand.

**Results**, per phase of the plan (`result_slots`):

- ``pPHASE.REGISTER`` (`result_slot`) for each register the phase reads: an
  int64 histogram of the register's values, ``2**bits`` entries, one row per
  frame (a batch of shots). Entry ``v`` counts the batch's shots whose
  register read ``v``, the register's first column the most significant bit
  (`register_histogram`). Summed over the frames: the register's counts over
  every shot of the phase.
- ``pPHASE.joint`` (`joint_slot`), when a phase reads more than one register
  and they have at most `MAX_JOINT_BITS` bits together: the histogram of all
  of them at once, their bits in plan order (first register most
  significant), for joint statistics.
- ``pPHASE.powers`` (`powers_slot`), for a phase that reads the photodiodes
  instead of firing shots: float64 watts per mode, one row.
- ``cycle``, for a cyclic job: with every frame of shots, the cycle it
  belongs to (0, 1, ...).

`parse_result_slot` reads a stored slot's name back into its phase and what
it holds; `powers_by_phase` gathers a procedure's photodiode readings. (A
register named ``joint`` or ``powers`` would share its name with those
slots: readers take such a name for what this layout means by it.)

**The journal** (`Journal`) is the job's state buffer, committed with every
frame: ``journal.phase`` (phases done), ``journal.shots`` (shots done in the
phase under way) and ``journal.cycle`` (cycles done). A job that resumes,
after any actor of its path died, goes on where it says (decision 0012).

**Plans an actor makes itself** for a procedure job (a calibration sweep, a
detector characterisation) are stored as ``procedure-JOB`` (`procedure_plan_id`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, NamedTuple

import numpy as np

from .memory import ResultRecord, SlotSpec, SlotValue
from .plan import Phase, Plan

JOINT: Final = "joint"
"""The register part of a phase's joint slot: all its registers together."""
POWERS: Final = "powers"
"""The register part of a photodiode phase's slot."""
MAX_JOINT_BITS: Final = 16
"""A phase's registers are also kept together only up to this many bits (a histogram of 2**16 entries)."""
CYCLE_SLOT: Final = "cycle"
"""A cyclic job's slot: the cycle each frame of shots belongs to."""

JOURNAL_PHASE: Final = "journal.phase"
JOURNAL_SHOTS: Final = "journal.shots"
JOURNAL_CYCLE: Final = "journal.cycle"
JOURNAL_SLOTS: Final = (JOURNAL_PHASE, JOURNAL_SHOTS, JOURNAL_CYCLE)
"""The journal's slots in the job's state buffer, in the order `Journal` holds them."""

_RESULT_SLOT = re.compile(r"p(0|[1-9][0-9]*)\.(.+)")


def result_slot(phase: int, register: str) -> str:
    """The slot of ``register``'s histogram in phase ``phase``: ``pPHASE.REGISTER``."""
    return f"p{phase}.{register}"


def joint_slot(phase: int) -> str:
    """The slot of all of phase ``phase``'s registers together: ``pPHASE.joint``."""
    return result_slot(phase, JOINT)


def powers_slot(phase: int) -> str:
    """The slot of phase ``phase``'s photodiode readings: ``pPHASE.powers``."""
    return result_slot(phase, POWERS)


class ResultSlot(NamedTuple):
    """A per-phase result slot, read back from its name."""

    phase: int
    register: str
    """The register's name; `JOINT` or `POWERS` for those slots."""

    @property
    def kind(self) -> Literal["register", "joint", "powers"]:
        """What the slot holds: one register's histogram, the joint one, or photodiode powers."""
        if self.register == JOINT:
            return "joint"
        if self.register == POWERS:
            return "powers"
        return "register"

    @property
    def name(self) -> str:
        return result_slot(self.phase, self.register)


def parse_result_slot(name: str) -> ResultSlot | None:
    """The phase and register of a per-phase slot (``p0.c``, ``p3.joint``); None for any other (``cycle``)."""
    match = _RESULT_SLOT.fullmatch(name)
    if match is None:
        return None
    return ResultSlot(int(match.group(1)), match.group(2))


def powers_by_phase(results: Iterable[ResultRecord]) -> dict[int, np.ndarray]:
    """A job's photodiode readings (``pPHASE.powers``), by phase, from its stored results."""
    return {
        slot.phase: np.asarray(r.value)
        for r in results
        if (slot := parse_result_slot(r.slot)) is not None and slot.kind == "powers"
    }


def joint_bits(phase: Phase) -> int:
    """Bits of all of a phase's registers together."""
    return sum(len(r.columns) for r in phase.registers)


def has_joint_slot(phase: Phase) -> bool:
    """Whether the phase's registers are also kept together (more than one, at most `MAX_JOINT_BITS` bits)."""
    return len(phase.registers) > 1 and joint_bits(phase) <= MAX_JOINT_BITS


def result_slots(plan: Plan, *, cyclic: bool = False) -> list[SlotSpec]:
    """Every result slot of a job running ``plan`` (``cyclic``: it runs the plan again and again)."""
    slots = [
        SlotSpec(name=result_slot(p.index, r.name), dtype="int64", shape=[2 ** len(r.columns)])
        for p in plan.phases
        for r in p.registers
    ]
    slots += [
        SlotSpec(name=joint_slot(p.index), dtype="int64", shape=[2 ** joint_bits(p)])
        for p in plan.phases
        if has_joint_slot(p)
    ]
    slots += [
        SlotSpec(name=powers_slot(p.index), dtype="float64", shape=[plan.modes])
        for p in plan.phases
        if p.readout == "powers"
    ]
    if cyclic:
        slots.append(SlotSpec(name=CYCLE_SLOT, dtype="int64"))
    return slots


def register_histogram(patterns: np.ndarray, columns: list[int], counts: np.ndarray | None = None) -> np.ndarray:
    """How often each value of a register occurred in a batch of shots.

    ``patterns`` is (rows, width): every shot's pattern, or, with ``counts``
    (one per row), each distinct pattern and how many shots read it (what
    ``hal.shots`` carries). A column that clicked (non-zero) is a 1 bit;
    ``columns[0]`` is the most significant. The histogram has
    ``2**len(columns)`` int64 entries.
    """
    clicks = (np.asarray(patterns)[:, columns] > 0).astype(np.int64)
    weights = 1 << np.arange(len(columns) - 1, -1, -1, dtype=np.int64)
    weight = None if counts is None else np.asarray(counts, dtype=np.float64)  # exact below 2**53 shots
    histogram: np.ndarray = np.bincount(clicks @ weights, weights=weight, minlength=2 ** len(columns))
    return histogram.astype(np.int64)


def click_totals(patterns: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """Per column, how many of the shots clicked there (``patterns``, ``counts`` as `register_histogram` takes them)."""
    clicked = (np.asarray(patterns) > 0).astype(np.int64)
    weight = np.ones(len(clicked), dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64)
    totals: np.ndarray = weight @ clicked
    return totals


def shot_values(phase: Phase, patterns: np.ndarray, counts: np.ndarray | None = None) -> list[SlotValue]:
    """A batch of a phase's shots as its result slots hold them: each register's histogram, and the joint one.

    ``patterns`` and ``counts`` as `register_histogram` takes them.
    """
    values = [
        SlotValue(slot=result_slot(phase.index, r.name), value=register_histogram(patterns, r.columns, counts))
        for r in phase.registers
    ]
    if has_joint_slot(phase):
        columns = [c for r in phase.registers for c in r.columns]
        values.append(SlotValue(slot=joint_slot(phase.index), value=register_histogram(patterns, columns, counts)))
    return values


class Journal(NamedTuple):
    """Where a job stands, as its state buffer records it with every frame."""

    phase: int = 0
    """Phases done (the first one to run next)."""
    shots: int = 0
    """Shots done in that phase."""
    cycle: int = 0
    """Cycles done (a cyclic job)."""

    @staticmethod
    def slots() -> list[SlotSpec]:
        """The journal's slots, allocated in the job's state buffer."""
        return [SlotSpec(name=name, dtype="int64") for name in JOURNAL_SLOTS]

    def values(self) -> list[SlotValue]:
        """The journal as a frame writes it."""
        return [SlotValue(slot=name, value=value) for name, value in zip(JOURNAL_SLOTS, self, strict=True)]

    @classmethod
    def read(cls, values: Mapping[str, Any]) -> Journal:
        """The journal from a read of the job's state buffer (``mem.read`` of `JOURNAL_SLOTS`)."""
        return cls(*(int(values[name]) for name in JOURNAL_SLOTS))


def procedure_plan_id(job: str) -> str:
    """The id under which the plan an actor made for procedure job ``job`` is stored: ``procedure-JOB``."""
    return f"procedure-{job}"
