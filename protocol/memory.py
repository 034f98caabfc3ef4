"""Messages of the memory actor: result slots while a job runs, and the durable store.

Two halves. *Slots* are typed numpy storage the memory actor allocates for a
running job: results written once per frame (one writer per slot per frame) and
a state buffer that lives across frames. The *store* is the durable record:
jobs and their state transitions, plans, results, calibrations and an event log.
Every store request is answered only after its transaction has committed.

A slot value on the wire is a numpy array (ext type 1) of exactly the slot's
dtype and shape, ``bytes`` for a ``bytes`` slot, or for a 0-d slot a plain
bool, int or float of the slot's kind. Nothing is converted silently.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Final, Literal, get_args

import msgspec

from ._message import Count, Event, Finite, Index, Label, Priority, Reply, Request, Text, Timestamp
from .calibration_model import CalibrationData, CalibrationFits, FitResiduals, FitUncertainties
from .circuit import Circuit
from .plan import Plan as ExecutionPlan
from .system import Ok

MAX_JOB_SLOTS = 65_536
"""The most slots (results and state together) one job allocates, and one request names."""

MAX_SLOT_ELEMENTS = 2**40
"""The product of a slot shape's non-zero dimensions is at most this (the byte limits refuse far less)."""

MAX_SLOT_NDIM = 32

MAX_QUERY = 100_000
"""The most records one query returns (``limit``); page with ``since``/``after_seq`` for more."""

MAX_ENTRIES = 65_536
"""The most entries of a map in a request (a plan's metrics)."""

JobId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
SlotName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")]
SlotId = Annotated[int, msgspec.Meta(ge=0, le=MAX_JOB_SLOTS - 1)]
SlotRef = SlotName | SlotId
"""A slot by name, or by the dense id `Allocated` gave it."""
SlotRefs = Annotated[list[SlotRef], msgspec.Meta(max_length=MAX_JOB_SLOTS)]
Frame = Count
Dim = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
CalibrationVersion = Count
"""A device's calibration version: 1, 2, ... (SQLite INTEGER)."""
PlanId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Device = Label
"""A device's name where the memory actor records it (``""``: none)."""
Dtype = Literal["float64", "float32", "int64", "int32", "uint32", "bool", "bytes"]
DTYPES: Final = ("float64", "float32", "int64", "int32", "uint32", "bool", "bytes")

SubmissionKey = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/=+-]+$")]
"""A client's name for one submission (1-128 of ``[A-Za-z0-9_.:/=+-]``): the same key never makes a second job."""

MAX_TAGS = 16
Tags = Annotated[list[Label], msgspec.Meta(max_length=MAX_TAGS)]
"""A job's tags (at most 16 labels), to find it by."""

JobState = Literal["queued", "planned", "running", "completed", "failed", "cancelled", "interrupted"]
FinalState = Literal["completed", "failed", "cancelled"]
"""The states a job ends in: it moves nowhere from them."""
TERMINAL_STATES: Final[frozenset[JobState]] = frozenset(get_args(FinalState))
JOB_TRANSITIONS: Final[dict[JobState, frozenset[JobState]]] = {
    "queued": frozenset({"planned", "failed", "cancelled"}),
    "planned": frozenset({"queued", "running", "failed", "cancelled"}),
    "running": frozenset({"planned", "completed", "failed", "cancelled", "interrupted"}),
    "interrupted": frozenset({"queued", "planned", "running", "failed", "cancelled"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
"""Which state a job may move to from each state. ``running -> planned`` is a
preemption at a phase boundary; ``interrupted`` is what a restart finds a job
that was running when its process ended."""


class _Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every body part: frozen, strict about unknown fields."""


# --- slots --------------------------------------------------------------------------------


class SlotSpec(_Body, frozen=True, kw_only=True):
    """One slot of a job's layout.

    ``shape`` is the array shape (``[]`` for a scalar); for a ``bytes`` slot it
    is ``[capacity]``, the most bytes the slot holds.
    """

    name: SlotName
    dtype: Dtype
    shape: Annotated[list[Dim], msgspec.Meta(max_length=MAX_SLOT_NDIM)] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        # Refused while decoding (msgspec turns this into a validation error), before any allocation is tried.
        if math.prod(n for n in self.shape if n) > MAX_SLOT_ELEMENTS:
            raise ValueError(f"a slot of shape {self.shape} is too large: at most {MAX_SLOT_ELEMENTS} elements")


class SlotInfo(_Body, frozen=True, kw_only=True):
    id: SlotId
    name: SlotName
    dtype: Dtype
    shape: list[Dim]
    nbytes: Count
    state: bool
    """True for a state-buffer slot (lives across frames), False for a result slot."""


class Allocated(Reply, frozen=True, kw_only=True):
    TYPE = "mem.allocated"
    job: JobId
    slots: list[SlotInfo]
    frame: Frame
    """The open frame: 0 for a new job, the one after the last committed frame on resume."""
    nbytes: Count


class Allocate(Request[Allocated], frozen=True, kw_only=True):
    """Allocate a job's result slots and state buffer.

    ``constants`` gives the initial value of state slots (the constant pool);
    a state slot without one starts at zero. ``device``, ``plan`` and
    ``calibration`` are recorded with every result the job commits. With
    ``resume``, a job that has committed frames before (a restarted executor)
    continues at the next frame with the state buffer as last committed.
    Refused with ``memory-limit`` if the job would hold more bytes than allowed.

    With ``mark_running`` (the reason), the job is marked ``running`` too: the
    executor records that it runs the job. That transition is written with
    the next transaction and the reply does not wait for it (anything the job
    commits later comes after it); a job that has ended is refused with
    ``illegal-transition`` and nothing is allocated.

    With ``accepting``, the job's ``mem.put_job`` may still be on its way (the
    scheduler dispatched it while its acceptance commits): a job not stored
    yet is waited for, up to the memory actor's ``accept_wait_s``, before it
    is refused with ``not-found``.
    """

    TYPE = "mem.allocate"
    REPLY = Allocated
    job: JobId
    slots: Annotated[list[SlotSpec], msgspec.Meta(max_length=MAX_JOB_SLOTS)]
    state: Annotated[list[SlotSpec], msgspec.Meta(max_length=MAX_JOB_SLOTS)] = msgspec.field(default_factory=list)
    constants: Annotated[dict[SlotName, Any], msgspec.Meta(max_length=MAX_JOB_SLOTS)] = msgspec.field(
        default_factory=dict
    )
    device: Device
    plan: PlanId | None = None
    calibration: CalibrationVersion | None = None
    resume: bool = False
    mark_running: Text | None = None
    accepting: bool = False


class SlotValue(_Body, frozen=True, kw_only=True):
    slot: SlotRef
    value: Any


class Written(Reply, frozen=True, kw_only=True):
    TYPE = "mem.written"
    job: JobId
    frame: Frame
    committed: bool
    """True if ``commit`` was asked and the frame is now durable."""


class Write(Request[Written], frozen=True, kw_only=True):
    """Write slots in the open frame, all or none; with ``commit``, commit the frame too.

    With ``allocate``, the job's slots are allocated first (as by
    `Allocate`): a job with nothing to resume allocates with its first write,
    one message instead of two. With ``finish`` (and ``commit``) this is the
    job's last frame: the job moves to that state (with ``reason``) in the
    same transaction, the end is announced (``mem.job_state_changed``,
    ``mem.results_complete``) and its slots are freed.

    Refused with ``slot-conflict`` if another writer (or this one) already
    wrote a slot in this frame, ``bad-value`` for a wrong dtype or shape.
    """

    TYPE = "mem.write"
    REPLY = Written
    job: JobId
    frame: Frame
    writer: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    values: Annotated[list[SlotValue], msgspec.Meta(max_length=MAX_JOB_SLOTS)]
    commit: bool = False
    finish: FinalState | None = None
    reason: Text = ""
    allocate: Allocate | None = None


class Values(Reply, frozen=True, kw_only=True):
    TYPE = "mem.values"
    job: JobId
    frame: Frame
    values: dict[str, Any]


class Read(Request[Values], frozen=True, kw_only=True):
    """Current values of some slots (``slots`` empty: every slot), by name."""

    TYPE = "mem.read"
    REPLY = Values
    job: JobId
    slots: SlotRefs = msgspec.field(default_factory=list)


class Clear(Request[Ok], frozen=True, kw_only=True):
    """Reset slots (``slots`` empty: every slot): results to zero, state to its constant."""

    TYPE = "mem.clear"
    REPLY = Ok
    job: JobId
    slots: SlotRefs = msgspec.field(default_factory=list)


class FrameCommitted(Reply, frozen=True, kw_only=True):
    TYPE = "mem.frame_committed"
    job: JobId
    frame: Frame
    results: Count
    """Result rows this frame stored (one per slot written in it)."""


class CommitFrame(Request[FrameCommitted], frozen=True, kw_only=True):
    """Make the open frame durable and open the next one.

    Stores every result slot written in the frame, and the state buffer, in one
    transaction; the reply comes after it has committed. ``phase`` is the plan
    phase the frame belongs to, journalled for resuming after a crash.
    """

    TYPE = "mem.commit_frame"
    REPLY = FrameCommitted
    job: JobId
    frame: Frame
    phase: Index | None = None


class Free(Request[Ok], frozen=True, kw_only=True):
    """Release a job's slots and state buffer (its committed results stay in the store)."""

    TYPE = "mem.free"
    REPLY = Ok
    job: JobId


# --- jobs ---------------------------------------------------------------------------------


class Transition(_Body, frozen=True, kw_only=True):
    state: JobState
    previous: JobState | None
    reason: Text
    ts: float


class Procedure(_Body, frozen=True, kw_only=True):
    """A job that runs a plan an actor made itself (a calibration sweep), not a circuit."""

    description: Text = msgspec.field(name="procedure")
    """What it does, for people (on the wire and in the store ``procedure``)."""
    plan: PlanId
    """The plan it runs (stored with `PutPlan`)."""


class JobRecord(_Body, frozen=True, kw_only=True):
    """A job as the store holds it. ``circuit``, ``procedure`` and ``transitions`` only from `GetJob`."""

    job: JobId
    seq: Count
    """Order of acceptance: the queue's FIFO order within a priority."""
    state: JobState
    reason: Text
    priority: Priority
    shots: Count
    device: Device
    deadline: float | None
    submitter: Label
    submitted: float
    updated: float
    plan: PlanId | None
    calibration: CalibrationVersion | None
    frames: Count
    """Frames committed so far."""
    last_phase: Index | None
    """The plan phase of the last committed frame."""
    results: Count
    key: SubmissionKey | None = None
    """The submission key it was stored under, if any."""
    tags: Tags = msgspec.field(default_factory=list)
    circuit: Circuit | None = None
    procedure: Procedure | None = None
    transitions: list[Transition] = msgspec.field(default_factory=list)


class JobStored(Reply, frozen=True, kw_only=True):
    TYPE = "mem.job_stored"
    job: JobId
    """The job stored: the one asked for, or the one stored before under the same ``key``."""
    seq: Count
    created: bool
    """False if the same job was stored before (a repeated submission): nothing changed."""


class PutJob(Request[JobStored], frozen=True, kw_only=True):
    """Store a new job in state ``queued``, or with ``plan`` straight on to ``planned`` in the same transaction
    (the scheduler had its plan already; ``calibration`` is the version the plan was made for).

    A job is a ``circuit``, or a ``procedure`` (a plan an actor made). Repeating
    it with the same content is harmless (``created`` is False); the same id
    with different content is refused with ``exists``.

    ``key`` (a client's submission key) makes a submission idempotent: if a job
    is stored under the key already, and was submitted with the same circuit or
    procedure, shots, priority, deadline and tags, the reply names that job
    (``created`` False, whatever its state; ``job`` is then not stored).
    Another submission under the key is refused with ``exists``, naming the
    job, when it was submitted and the first differing field.
    """

    TYPE = "mem.put_job"
    REPLY = JobStored
    job: JobId
    circuit: Circuit | None = None
    procedure: Procedure | None = None
    shots: Count = 0
    priority: Priority = 0
    device: Device = ""
    deadline: Timestamp | None = None
    submitter: Label = ""
    plan: PlanId | None = None
    calibration: CalibrationVersion | None = None
    key: SubmissionKey | None = None
    tags: Tags = msgspec.field(default_factory=list)
    with_plan: PutPlan | None = None
    """The job's plan (``plan``), made at its submission: stored in the same transaction."""

    def __post_init__(self) -> None:
        if self.with_plan is not None and self.with_plan.plan != self.plan:
            raise ValueError(f"with_plan is plan {self.with_plan.plan!r}, the job's plan is {self.plan!r}")
        if self.circuit is not None and self.procedure is not None:
            raise ValueError("a job is a circuit or a procedure, not both")


class JobStateSet(Reply, frozen=True, kw_only=True):
    TYPE = "mem.job_state"
    job: JobId
    state: JobState
    previous: JobState


class SetJobState(Request[JobStateSet], frozen=True, kw_only=True):
    """Move a job to another state, with the reason when it is not a success.

    Refused with ``illegal-transition`` if `JOB_TRANSITIONS` does not allow it,
    or if ``expect`` is given and the job is in none of those states.
    ``plan`` and ``calibration`` record what the job runs with.
    """

    TYPE = "mem.set_job_state"
    REPLY = JobStateSet
    job: JobId
    state: JobState
    reason: Text = ""
    expect: Annotated[list[JobState], msgspec.Meta(max_length=7)] | None = None
    plan: PlanId | None = None
    calibration: CalibrationVersion | None = None


class Job(Reply, frozen=True, kw_only=True):
    TYPE = "mem.job"
    record: JobRecord


class GetJob(Request[Job], frozen=True, kw_only=True):
    """One job with its circuit and every state transition."""

    TYPE = "mem.get_job"
    REPLY = Job
    job: JobId


class Jobs(Reply, frozen=True, kw_only=True):
    TYPE = "mem.jobs"
    jobs: list[JobRecord]


class QueryJobs(Request[Jobs], frozen=True, kw_only=True):
    """Jobs in acceptance order, filtered by state, device, submission time (unix seconds), submission key
    and tags (a job has every one of ``tags``)."""

    TYPE = "mem.query_jobs"
    REPLY = Jobs
    states: Annotated[list[JobState], msgspec.Meta(max_length=7)] = msgspec.field(default_factory=list)
    device: Device | None = None
    since: Timestamp | None = None
    until: Timestamp | None = None
    key: SubmissionKey | None = None
    tags: Tags = msgspec.field(default_factory=list)
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUERY)] = 1000
    newest: bool = False
    """The last ``limit`` jobs, newest first (a lab page's recent jobs), instead of the first, oldest first."""


# --- plans --------------------------------------------------------------------------------


class PlanStored(Reply, frozen=True, kw_only=True):
    TYPE = "mem.plan_stored"
    plan: PlanId
    created: bool


class PutPlan(Request[PlanStored], frozen=True, kw_only=True):
    """Store an execution plan under its id (a content hash: storing it again changes nothing)."""

    TYPE = "mem.put_plan"
    REPLY = PlanStored
    plan: PlanId
    job: Label | None = None
    device: Device = ""
    calibration: CalibrationVersion | None = None
    body: ExecutionPlan
    metrics: Annotated[dict[Label, Finite], msgspec.Meta(max_length=MAX_ENTRIES)] = msgspec.field(default_factory=dict)


class StoredPlan(Reply, frozen=True, kw_only=True):
    """A stored plan with what it was stored with."""

    TYPE = "mem.plan"
    plan: PlanId
    job: Label | None
    device: Device
    calibration: CalibrationVersion | None
    body: ExecutionPlan
    metrics: dict[str, float]
    created: float


class GetPlan(Request[StoredPlan], frozen=True, kw_only=True):
    TYPE = "mem.get_plan"
    REPLY = StoredPlan
    plan: PlanId


# --- results ------------------------------------------------------------------------------


class ResultRecord(_Body, frozen=True, kw_only=True):
    """One slot's value in one frame, and where it came from."""

    id: Count
    job: JobId
    slot: SlotName
    frame: Frame
    phase: Index | None
    device: Device
    calibration: CalibrationVersion | None
    plan: PlanId | None
    dtype: Dtype
    shape: list[Dim]
    ts: float
    value: Any = None
    """The array (or bytes); None when the query asked for metadata only."""


class Results(Reply, frozen=True, kw_only=True):
    TYPE = "mem.results"
    job: JobId
    state: JobState
    partial: bool
    """True unless the job completed: the results are what was committed before it stopped."""
    results: list[ResultRecord]
    record: JobRecord | None = None
    """With `QueryResults.record`: the job's record, read with its results."""


class QueryResults(Request[Results], frozen=True, kw_only=True):
    """A job's results in frame order, optionally only some slots, optionally without values.

    ``record``: the job's record comes with them, read together (one round trip for a job's
    whole story: the door's answer to a client waiting for a job).
    """

    TYPE = "mem.query_results"
    REPLY = Results
    job: JobId
    slots: Annotated[list[SlotName], msgspec.Meta(max_length=MAX_JOB_SLOTS)] = msgspec.field(default_factory=list)
    values: bool = True
    record: bool = False


class DeviceResults(Reply, frozen=True, kw_only=True):
    TYPE = "mem.device_results"
    results: list[ResultRecord]


class QueryDeviceResults(Request[DeviceResults], frozen=True, kw_only=True):
    """Result metadata (no values) taken on a device within a time range, oldest first."""

    TYPE = "mem.query_device_results"
    REPLY = DeviceResults
    device: Device
    since: Timestamp | None = None
    until: Timestamp | None = None
    key: SubmissionKey | None = None
    tags: Tags = msgspec.field(default_factory=list)
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUERY)] = 1000


class Exported(Reply, frozen=True, kw_only=True):
    TYPE = "mem.exported"
    job: JobId
    path: Text
    size: Count
    """Bytes written."""


class Export(Request[Exported], frozen=True, kw_only=True):
    """Write a job's results and provenance to a file on the memory actor's machine.

    ``npz``: one array per slot stacked over frames (``frames`` holds the frame
    numbers) and ``meta`` the job record as JSON. ``json``: one document.
    The file goes to the store's ``exports`` directory: ``path`` names it there
    (sub-folders allowed); one that leads out of it is refused.
    """

    TYPE = "mem.export"
    REPLY = Exported
    job: JobId
    format: Literal["npz", "json"] = "npz"
    path: Annotated[str, msgspec.Meta(min_length=1, max_length=4096, pattern="^[^\x00]*$")] | None = None


# --- calibrations -------------------------------------------------------------------------


class CalibrationStored(Reply, frozen=True, kw_only=True):
    TYPE = "mem.calibration_stored"
    device: Device
    version: CalibrationVersion


class PutCalibration(Request[CalibrationStored], frozen=True, kw_only=True):
    """Store a new calibration of a device; versions count up from 1 per device."""

    TYPE = "mem.put_calibration"
    REPLY = CalibrationStored
    device: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    identity: Text
    fits: CalibrationFits
    uncertainties: FitUncertainties = msgspec.field(default_factory=FitUncertainties)
    residuals: FitResiduals = msgspec.field(default_factory=FitResiduals)
    data: CalibrationData = msgspec.field(default_factory=CalibrationData)
    note: Text = ""


class Calibration(Reply, frozen=True, kw_only=True):
    TYPE = "mem.calibration"
    device: Device
    version: CalibrationVersion
    identity: Text
    created: float
    fits: CalibrationFits
    uncertainties: FitUncertainties
    residuals: FitResiduals
    data: CalibrationData
    note: str


class GetCalibration(Request[Calibration], frozen=True, kw_only=True):
    """One version of a device's calibration; the latest if ``version`` is not given."""

    TYPE = "mem.get_calibration"
    REPLY = Calibration
    device: Device
    version: CalibrationVersion | None = None


class CalibrationInfo(_Body, frozen=True, kw_only=True):
    device: Device
    version: CalibrationVersion
    identity: Text
    created: float
    note: str


class Calibrations(Reply, frozen=True, kw_only=True):
    TYPE = "mem.calibrations"
    calibrations: list[CalibrationInfo]


class ListCalibrations(Request[Calibrations], frozen=True, kw_only=True):
    """Every stored calibration version (of one device, if given), oldest first."""

    TYPE = "mem.list_calibrations"
    REPLY = Calibrations
    device: Device | None = None


# --- event log and status -----------------------------------------------------------------


class LoggedEvent(_Body, frozen=True, kw_only=True):
    seq: Count
    ts: float
    type: str
    sender: str
    body: Any


class EventLog(Reply, frozen=True, kw_only=True):
    TYPE = "mem.event_log"
    events: list[LoggedEvent]


class QueryEvents(Request[EventLog], frozen=True, kw_only=True):
    """Logged events whose type starts with ``prefix``, oldest first, after ``after_seq``."""

    TYPE = "mem.query_events"
    REPLY = EventLog
    prefix: Label = ""
    since: Timestamp | None = None
    until: Timestamp | None = None
    after_seq: Count = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUERY)] = 1000


class LogEvent(Request[Ok], frozen=True, kw_only=True):
    """Append a record to the event log durably (answered after it has committed), for state an
    actor must find again after a restart; published events are logged too, but may be missed."""

    TYPE = "mem.log_event"
    REPLY = Ok
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    body: Any = None


class StoreInfo(Reply, frozen=True, kw_only=True):
    TYPE = "mem.store_info"
    path: Text
    schema_version: Count
    file_bytes: Count
    jobs: dict[str, Count]
    """Jobs per state."""
    results: Count
    calibrations: Count
    events: Count
    allocated_jobs: Count
    allocated_bytes: Count
    writable: bool = True
    """awen's user may write the store's file and its directory."""
    free_bytes: Count = 0
    """Free space on the store's file system, for awen's user."""


class GetStoreInfo(Request[StoreInfo], frozen=True, kw_only=True):
    TYPE = "mem.get_store_info"
    REPLY = StoreInfo


class JobStateChanged(Event, frozen=True, kw_only=True):
    TYPE = "mem.job_state_changed"
    job: JobId
    state: JobState
    previous: JobState | None
    reason: Text


class CalibrationAdded(Event, frozen=True, kw_only=True):
    """A calibration version was stored: plans made from now on use it."""

    TYPE = "mem.calibration_added"
    device: Device
    version: CalibrationVersion


class ResultsComplete(Event, frozen=True, kw_only=True):
    """A job reached a final state: its results are all in the store."""

    TYPE = "mem.results_complete"
    job: JobId
    state: JobState
    frames: Count
    results: Count
    partial: bool


MEMORY_MESSAGES: Final = (
    Allocate,
    Allocated,
    Write,
    Written,
    Read,
    Values,
    Clear,
    CommitFrame,
    FrameCommitted,
    Free,
    PutJob,
    JobStored,
    SetJobState,
    JobStateSet,
    GetJob,
    Job,
    QueryJobs,
    Jobs,
    PutPlan,
    PlanStored,
    GetPlan,
    StoredPlan,
    QueryResults,
    Results,
    QueryDeviceResults,
    DeviceResults,
    Export,
    Exported,
    PutCalibration,
    CalibrationStored,
    GetCalibration,
    Calibration,
    ListCalibrations,
    Calibrations,
    QueryEvents,
    EventLog,
    LogEvent,
    GetStoreInfo,
    StoreInfo,
    JobStateChanged,
    CalibrationAdded,
    ResultsComplete,
)
