"""The client protocol: what a client says to the door, the one address of a running lab.

A client (a script, the ``awen`` command, a program in another language)
opens one DEALER to the door (``tcp://127.0.0.1:7460`` or the ipc socket in
the data directory) and speaks awen's envelope both ways (docs/protocol.md).
Its requests either name an actor in ``to`` and are forwarded, if the door's
allowlist (`FORWARDED`) holds their type, or name the door and are one of the
``door.*`` requests below. Events reach a client that subscribed as pushed
frames on the same socket (no ``re``). Decision 0014 has the design.

`JobResult` is a finished job as a client sees it: counts per register with
their logical modes and physical columns, the joint counts, and the figures
the circuit declared, assembled here once (`assemble_result`) so that every
client reads the same document.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Final

import msgspec
import numpy as np

from . import analysis
from ._message import Count, Finite, Index, Label, Pid, Reply, Request, Text, Timestamp
from .calibration_model import CalibrationData
from .memory import (
    TERMINAL_STATES,
    CalibrationVersion,
    Device,
    JobId,
    JobRecord,
    PlanId,
    ResultRecord,
    SubmissionKey,
    Tags,
)
from .plan import Plan
from .results import parse_result_slot
from .system import Ok, Status

CLIENT_PROTOCOL: Final = 1
"""The client protocol's version: `Hello.protocol`; a door refuses a client of another."""

DOOR: Final = "door"
"""The door's name: a request whose ``to`` is this is the door's own."""

MAX_PREFIXES: Final = 64
MAX_WAIT_S: Final = 60.0
"""The longest one `WaitJob` holds: a client asks again (a long poll), so a dead connection is noticed."""

FORWARDED: Final[Mapping[str, frozenset[str]]] = {
    "scheduler": frozenset(
        {"sched.submit", "sched.validate", "sched.cancel", "sched.pause", "sched.resume", "sched.get_queue"}
    ),
    "memory": frozenset(
        {
            "mem.get_job",
            "mem.query_jobs",
            "mem.query_results",
            "mem.get_plan",
            "mem.get_calibration",
            "mem.list_calibrations",
            "mem.query_events",
            "mem.get_store_info",
        }
    ),
    "calibration": frozenset({"cal.calibrate", "cal.get_status", "cal.check_reference"}),
    "hal": frozenset({"hal.list_devices", "hal.describe", "hal.get_device_status", "hal.reset_interlock"}),
    "executor": frozenset({"exec.get_status", "exec.abort"}),
}
"""Per actor kind, the requests the door forwards to an actor of that kind; ``sys.ping`` and
``sys.get_status`` go to any. Nothing that sets the chip (``hal.set_heaters``) or writes the store
(``mem.put_job``) is here: a client reaches them only through the scheduler's checks. The one device
action is ``hal.reset_interlock``, the operator's once the cause is gone: it re-arms the interlock and
leaves every heater at 0 V (decision 0016, "Resetting the interlock")."""

ANY_ACTOR: Final = frozenset({"sys.ping", "sys.get_status"})


class Welcome(Reply, frozen=True, kw_only=True):
    TYPE = "door.welcome"
    lab: Label
    awen: Label
    """awen's version."""
    protocol: Count
    incarnation: Count
    """New at each start of the door: a client that sees another one says hello and subscribes again."""
    pid: Pid
    started: Timestamp
    actors: dict[str, str]
    """Each actor's name and kind (``scheduler``: ``scheduler``)."""
    devices: list[Label]
    endpoints: list[Text]
    forwards: dict[str, list[str]]
    """Per actor name, the request types the door forwards to it."""
    heartbeat_s: Finite
    """How often the door pushes ``sys.heartbeat`` to a subscribed client."""
    lease_s: Finite
    """A subscriber silent this long is forgotten: renew (`Subscribe`) more often."""
    max_frame_bytes: Count


class Hello(Request[Welcome], frozen=True, kw_only=True):
    """A client's first word; the answer says what the lab is and what it forwards."""

    TYPE = "door.hello"
    REPLY = Welcome
    client: Label
    """What the client calls itself (``awen-cli``, ``notebook``): stored as each job's ``submitter``."""
    protocol: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] = CLIENT_PROTOCOL


class Subscribe(Request[Ok], frozen=True, kw_only=True):
    """Push the events whose type starts with one of ``prefixes`` to this client; replaces the set, renews the lease.

    ``[]`` stops them. Events come as their publisher's frames; a client that
    does not keep up loses some (ZeroMQ's high-water mark), as any subscriber would.
    """

    TYPE = "door.subscribe"
    REPLY = Ok
    prefixes: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(max_length=MAX_PREFIXES)]


class RegisterCounts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One register's histogram in one phase: ``counts[v]`` shots read value ``v`` (first mode most significant)."""

    name: Label
    phase: Index
    modes: list[Index]
    """The circuit's (logical) modes the register reads, in bit order."""
    columns: list[Index]
    """The detectors (physical columns) the plan placed them on."""
    counts: np.ndarray


class JointCounts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """All of a phase's registers read in the same shots, their bits side by side (first register first)."""

    phase: Index
    registers: list[Label]
    bits: list[Index]
    counts: np.ndarray


class JobResult(Reply, frozen=True, kw_only=True):
    """A job's results as a client reads them: what was measured, and what it was measured under.

    ``counts`` are summed over the job's committed frames. ``partial``: the job
    did not complete, these are the frames it committed.
    """

    TYPE = "door.result"
    job: JobId
    key: SubmissionKey | None
    tags: Tags
    state: str
    reason: Text
    partial: bool
    shots: Count
    device: Device
    calibration: CalibrationVersion | None
    plan: PlanId | None
    submitted: Timestamp
    ended: Timestamp | None
    frames: Count
    registers: list[RegisterCounts]
    joint: list[JointCounts]
    powers: dict[str, np.ndarray] = msgspec.field(default_factory=dict)
    """Per phase (``"0"``), the photodiode readings of a phase that measures power."""
    figures: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    """The circuit's declared figures (``analysis``), measured: ``{"figure", "value", "sigma", ...}``."""


class GetResult(Request[JobResult], frozen=True, kw_only=True):
    """A job's results (`JobResult`), in whatever state it is: a job that has not ended gives what it committed."""

    TYPE = "door.get_result"
    REPLY = JobResult
    job: JobId


class JobWaited(Reply, frozen=True, kw_only=True):
    TYPE = "door.job"
    record: JobRecord
    ended: bool
    """The job is completed, failed or cancelled."""
    result: JobResult | None = None
    """With `WaitJob.result`, the ended job's results."""


class WaitJob(Request[JobWaited], frozen=True, kw_only=True):
    """Answer when ``job`` has ended, or after ``timeout_s``, whichever is first: a long poll.

    The client asks again until ``ended``. With ``result``, the ended job's
    results come in the same reply.
    """

    TYPE = "door.wait_job"
    REPLY = JobWaited
    job: JobId
    timeout_s: Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT_S)] = 30.0
    result: bool = False


class ActorStatus(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Label
    status: Status | None
    error: Text = ""
    """Why it did not answer, if it did not."""


class LabStatus(Reply, frozen=True, kw_only=True):
    TYPE = "door.lab_status"
    lab: Label
    actors: list[ActorStatus]


class GetLabStatus(Request[LabStatus], frozen=True, kw_only=True):
    """Every actor's ``sys.status``, or why it did not answer."""

    TYPE = "door.status"
    REPLY = LabStatus


DOOR_MESSAGES: Final = (
    Hello,
    Welcome,
    Subscribe,
    GetResult,
    JobResult,
    WaitJob,
    JobWaited,
    GetLabStatus,
    LabStatus,
)


def assemble_result(
    record: JobRecord,
    plan: Plan | None,
    results: Iterable[ResultRecord],
    *,
    partial: bool,
    calibration: CalibrationData | None = None,
) -> JobResult:
    """The client's view of a job: its result records summed per slot, laid out by the plan.

    ``plan`` is None for a job that was never planned (no counts then). ``calibration``: the data of
    the calibration the job ran under, whose measured sources predict its HOM visibilities.
    """
    totals: dict[str, np.ndarray] = {}
    for r in results:
        value = np.asarray(r.value)
        totals[r.slot] = totals[r.slot] + value if r.slot in totals else value.copy()
    registers: list[RegisterCounts] = []
    joint: list[JointCounts] = []
    powers: dict[str, np.ndarray] = {}
    figures: dict[str, dict[str, Any]] = {}
    if plan is not None:
        for phase in plan.phases:
            for read in phase.registers:
                found = totals.get(f"p{phase.index}.{read.name}")
                if found is not None:
                    registers.append(
                        RegisterCounts(
                            name=read.name,
                            phase=phase.index,
                            modes=list(read.modes),
                            columns=list(read.columns),
                            counts=found.astype(np.int64),
                        )
                    )
        for slot, value in totals.items():
            parsed = parse_result_slot(slot)
            if parsed is None:
                continue
            if parsed.kind == "joint":
                phase = plan.phases[parsed.phase]
                joint.append(
                    JointCounts(
                        phase=parsed.phase,
                        registers=[r.name for r in phase.registers],
                        bits=[len(r.columns) for r in phase.registers],
                        counts=value.astype(np.int64),
                    )
                )
            elif parsed.kind == "powers":
                powers[str(parsed.phase)] = value
        if record.circuit is not None and record.circuit.analysis:
            declared = analysis.figures(record.circuit, plan, totals)
            if calibration is not None and record.calibration is not None:
                analysis.calibration_predictions(
                    record.circuit, plan, totals, declared, record.calibration, calibration
                )
            figures = _jsonable(declared)
    ended = record.updated if record.state in TERMINAL_STATES else None
    return JobResult(
        job=record.job,
        key=record.key,
        tags=list(record.tags),
        state=record.state,
        reason=record.reason,
        partial=partial,
        shots=record.shots,
        device=record.device,
        calibration=record.calibration,
        plan=record.plan,
        submitted=record.submitted,
        ended=ended,
        frames=record.frames,
        registers=registers,
        joint=sorted(joint, key=lambda j: j.phase),
        powers=powers,
        figures=figures,
    )


def _jsonable(value: Any) -> Any:
    """Figures as plain numbers and lists (numpy scalars and arrays in them converted)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
