"""Typed value slots for running jobs: one writer per slot per frame, a state buffer, byte limits.

Sans-IO: a `SlotTable` is plain data and numpy arrays; the memory actor calls it
and persists what `SlotTable.prepare_commit` hands back.

A *frame* is one step of execution (a phase, or a shot batch). Within the open
frame each slot may be written once; `SlotTable.finish_commit` closes the frame
and opens the next. Result slots hold what the frame measured; state slots
(classical registers, running histograms, counters) keep their value across
frames and start from the job's constant pool.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol import AwenError, ErrorCode, NotFound
from protocol.memory import Dtype, SlotInfo, SlotSpec

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(name) for name in ("float64", "float32", "int64", "int32", "uint32", "bool")
}


class SlotConflict(AwenError):
    code = ErrorCode.SLOT_CONFLICT


class BadValue(AwenError):
    code = ErrorCode.BAD_VALUE


class MemoryLimit(AwenError):
    code = ErrorCode.MEMORY_LIMIT


@dataclass(slots=True)
class Slot:
    id: int
    name: str
    dtype: Dtype
    shape: tuple[int, ...]
    state: bool
    value: np.ndarray | bytes
    initial: np.ndarray | bytes
    writer: str | None = None
    """Who wrote the slot in the open frame."""

    @property
    def nbytes(self) -> int:
        if self.dtype == "bytes":
            return self.shape[0]
        return math.prod(self.shape) * NUMPY_DTYPES[self.dtype].itemsize

    def info(self) -> SlotInfo:
        return SlotInfo(
            id=self.id, name=self.name, dtype=self.dtype, shape=list(self.shape), nbytes=self.nbytes, state=self.state
        )

    def check(self, value: Any) -> np.ndarray | bytes:
        """``value`` as this slot stores it, or `BadValue` naming what differs. Never converts."""
        if self.dtype == "bytes":
            if not isinstance(value, bytes | bytearray | memoryview):
                raise BadValue(f"slot {self.name!r} holds bytes, got {_describe(value)}", field=self.name)
            data = bytes(value)
            if len(data) > self.shape[0]:
                raise BadValue(
                    f"slot {self.name!r} holds at most {self.shape[0]} bytes, got {len(data)}", field=self.name
                )
            return data
        if isinstance(value, np.ndarray):
            if value.dtype != NUMPY_DTYPES[self.dtype]:
                raise BadValue(
                    f"slot {self.name!r} is {self.dtype}, got an array of {value.dtype.name}"
                    f"{'' if value.dtype.isnative else ' (non-native byte order)'}",
                    field=self.name,
                )
            if value.shape != self.shape:
                raise BadValue(f"slot {self.name!r} has shape {self.shape}, got {value.shape}", field=self.name)
            return value
        if not isinstance(value, bool | int | float):
            raise BadValue(
                f"slot {self.name!r} is {self.dtype}, got {_describe(value)} (send a numpy array)", field=self.name
            )
        if self.shape != ():
            raise BadValue(
                f"slot {self.name!r} has shape {self.shape}, got a scalar {_describe(value)}", field=self.name
            )
        return np.asarray(_exact_scalar(self.name, self.dtype, value), dtype=NUMPY_DTYPES[self.dtype])


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of {value.dtype.name} {value.shape}"
    return type(value).__name__


def _exact_scalar(name: str, dtype: str, value: Any) -> bool | int | float:
    """A plain scalar that fits the slot's dtype exactly, or `BadValue`."""
    kind = NUMPY_DTYPES[dtype].kind
    if kind == "b" and isinstance(value, bool):
        return value
    if kind in "iu" and isinstance(value, int) and not isinstance(value, bool):
        info = np.iinfo(NUMPY_DTYPES[dtype])
        if not info.min <= value <= info.max:
            raise BadValue(f"slot {name!r} is {dtype}; {value} is out of its range", field=name)
        return value
    if dtype == "float64" and isinstance(value, float):
        return value
    raise BadValue(f"slot {name!r} is {dtype}, got {_describe(value)}", field=name)


def _zeros(spec: SlotSpec) -> np.ndarray | bytes:
    if spec.dtype == "bytes":
        return b""
    return np.zeros(tuple(spec.shape), dtype=NUMPY_DTYPES[spec.dtype])


@dataclass
class JobSlots:
    """One job's slots, its open frame and the provenance every result records."""

    job: str
    device: str
    plan: str | None
    calibration: int | None
    slots: list[Slot]
    by_name: dict[str, Slot]
    frame: int = 0
    committing: bool = False
    nbytes: int = 0
    written: list[Slot] = field(default_factory=list)

    def slot(self, ref: str | int) -> Slot:
        if isinstance(ref, int):
            if 0 <= ref < len(self.slots):
                return self.slots[ref]
            raise NotFound(f"job {self.job!r} has no slot with id {ref} (ids 0..{len(self.slots) - 1})", field="slot")
        found = self.by_name.get(ref)
        if found is None:
            known = ", ".join(self.by_name) or "none"
            raise NotFound(f"job {self.job!r} has no slot {ref!r} (slots: {known})", field="slot")
        return found

    def select(self, refs: Sequence[str | int]) -> list[Slot]:
        return [self.slot(r) for r in refs] if refs else list(self.slots)


@dataclass(frozen=True)
class FrameSnapshot:
    """What a frame commit persists: the results written in it and the whole state buffer."""

    job: str
    frame: int
    results: list[tuple[str, np.ndarray | bytes]]
    state: list[tuple[str, np.ndarray | bytes]]


class SlotTable:
    """Every running job's slots.

    Args:
        max_job_bytes: Most bytes one job's slots and state may take.
        max_total_bytes: Most bytes all jobs' slots may take together.
    """

    def __init__(self, *, max_job_bytes: int, max_total_bytes: int) -> None:
        self.max_job_bytes = max_job_bytes
        self.max_total_bytes = max_total_bytes
        self.jobs: dict[str, JobSlots] = {}

    @property
    def nbytes(self) -> int:
        return sum(j.nbytes for j in self.jobs.values())

    def job(self, job: str) -> JobSlots:
        found = self.jobs.get(job)
        if found is None:
            raise NotFound(f"job {job!r} has no slots allocated (allocate first, or it was freed)", field="job")
        return found

    def allocate(
        self,
        job: str,
        slots: Iterable[SlotSpec],
        state: Iterable[SlotSpec] = (),
        constants: Mapping[str, Any] | None = None,
        *,
        device: str,
        plan: str | None = None,
        calibration: int | None = None,
    ) -> JobSlots:
        """Allocate a job's layout; re-allocating the same job replaces its slots."""
        constants = dict(constants or {})
        specs = [(s, False) for s in slots] + [(s, True) for s in state]
        names = [s.name for s, _ in specs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise AwenError(f"slot names must be unique within a job; repeated: {', '.join(repeated)}", field="slots")
        for spec, _ in specs:
            if spec.dtype == "bytes" and len(spec.shape) != 1:
                raise AwenError(
                    f"bytes slot {spec.name!r} needs shape [capacity], got {spec.shape}", field=f"slots.{spec.name}"
                )
        unknown = sorted(set(constants) - {s.name for s, is_state in specs if is_state})
        if unknown:
            raise AwenError(f"constants for slots that are not state slots: {', '.join(unknown)}", field="constants")

        built: list[Slot] = []
        for index, (spec, is_state) in enumerate(specs):
            slot = Slot(index, spec.name, spec.dtype, tuple(spec.shape), is_state, b"", b"")
            built.append(slot)
        nbytes = sum(s.nbytes for s in built)
        if nbytes > self.max_job_bytes:
            raise MemoryLimit(
                f"job {job!r} asks for {nbytes:,} bytes of slots; the limit per job is {self.max_job_bytes:,}",
                field="slots",
            )
        others = self.nbytes - (self.jobs[job].nbytes if job in self.jobs else 0)
        if others + nbytes > self.max_total_bytes:
            raise MemoryLimit(
                f"job {job!r} asks for {nbytes:,} bytes of slots; {others:,} of {self.max_total_bytes:,} "
                "are held by other jobs",
                field="slots",
            )
        for slot, (spec, _) in zip(built, specs, strict=True):
            slot.initial = slot.check(constants[spec.name]) if spec.name in constants else _zeros(spec)
            slot.value = _copy(slot.initial)
        allocated = JobSlots(
            job=job,
            device=device,
            plan=plan,
            calibration=calibration,
            slots=built,
            by_name={s.name: s for s in built},
            nbytes=nbytes,
        )
        self.jobs[job] = allocated
        return allocated

    def restore(self, job: str, frame: int, state: Mapping[str, np.ndarray | bytes]) -> None:
        """Continue a resumed job at ``frame`` with its state buffer as it was committed."""
        slots = self.job(job)
        slots.frame = frame
        for name, value in state.items():
            slot = slots.by_name.get(name)
            if slot is not None and slot.state:
                slot.value = _copy(slot.check(value))

    def write(self, job: str, frame: int, writer: str, values: Sequence[tuple[str | int, Any]]) -> JobSlots:
        """Write slots in the open frame: every value is checked before any is stored."""
        slots = self.job(job)
        self._check_open(slots, frame)
        checked: list[tuple[Slot, np.ndarray | bytes]] = []
        seen: dict[int, Slot] = {}
        for ref, value in values:
            slot = slots.slot(ref)
            if slot.writer is not None:
                raise SlotConflict(
                    f"slot {slot.name!r} of job {job!r} was written in frame {frame} by {slot.writer!r}; "
                    f"{writer!r} may not write it again until the frame is committed",
                    field=slot.name,
                )
            if slot.id in seen:
                raise SlotConflict(f"slot {slot.name!r} appears twice in one write by {writer!r}", field=slot.name)
            seen[slot.id] = slot
            checked.append((slot, slot.check(value)))
        for slot, value in checked:
            if isinstance(value, bytes):
                slot.value = value
            else:
                assert isinstance(slot.value, np.ndarray)
                slot.value[...] = value
            slot.writer = writer
            slots.written.append(slot)
        return slots

    def read(self, job: str, refs: Sequence[str | int] = ()) -> dict[str, np.ndarray | bytes]:
        slots = self.job(job)
        return {s.name: s.value for s in slots.select(refs)}

    def clear(self, job: str, refs: Sequence[str | int] = ()) -> None:
        """Back to zero (results) or to the constant (state). Not a write: the frame's writers stay."""
        for slot in self.job(job).select(refs):
            slot.value = _copy(slot.initial)

    def prepare_commit(self, job: str, frame: int) -> FrameSnapshot:
        """What committing the open frame stores; writes wait until `finish_commit` or `abort_commit`."""
        slots = self.job(job)
        self._check_open(slots, frame)
        slots.committing = True
        return FrameSnapshot(
            job=job,
            frame=frame,
            results=[(s.name, _copy(s.value)) for s in slots.written if not s.state],
            state=[(s.name, _copy(s.value)) for s in slots.slots if s.state],
        )

    def finish_commit(self, job: str, allocation: JobSlots | None = None) -> None:
        """The frame is stored: open the next. With ``allocation``, only if the job still has that one."""
        slots = self.jobs.get(job)
        if slots is None or (allocation is not None and slots is not allocation):
            return  # freed, or allocated anew, while the frame was being stored
        for slot in slots.written:
            slot.writer = None
        slots.written.clear()
        slots.frame += 1
        slots.committing = False

    def abort_commit(self, job: str, allocation: JobSlots | None = None) -> None:
        """The store refused the frame: it stays open, its writes kept, to be committed again."""
        slots = self.jobs.get(job)
        if slots is not None and (allocation is None or slots is allocation):
            slots.committing = False

    def free(self, job: str, allocation: JobSlots | None = None) -> None:
        """Free a job's slots (`NotFound` if it has none); with ``allocation``, only that one, if it is still there."""
        if allocation is not None:
            if self.jobs.get(job) is allocation:
                del self.jobs[job]
            return
        self.job(job)
        del self.jobs[job]

    @staticmethod
    def _check_open(slots: JobSlots, frame: int) -> None:
        if slots.committing:
            raise SlotConflict(f"frame {slots.frame} of job {slots.job!r} is being committed", field="frame")
        if frame != slots.frame:
            done = "was committed already" if frame < slots.frame else "is not open yet"
            raise SlotConflict(
                f"frame {frame} of job {slots.job!r} {done}; the open frame is {slots.frame}", field="frame"
            )


def _copy(value: np.ndarray | bytes) -> np.ndarray | bytes:
    return value.copy() if isinstance(value, np.ndarray) else value
