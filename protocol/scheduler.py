"""Messages of the scheduler actor: the job queue, plans, and the executor's side of dispatch.

Clients submit circuits (`Submit`), cancel jobs, pause and resume the queue.
The executor *pulls* work: `NextJob` returns the next plan when the queue has
one for it, and at every phase boundary `Checkpoint` reports what happened
and learns whether to continue, give the device up to a higher-priority job
(`preempt`), or stop (`cancel`). `JobFinished` ends a job.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from ._message import FLOAT_MAX, U63, Count, Event, Index, Label, Priority, Reason, Reply, Request, Seconds, Text
from .circuit import Circuit, CircuitProblem, RunMode
from .hal import MAX_DELAY_LINES, MAX_MODES, Column, DelayLine, Mode
from .memory import JobId, PlanId, SubmissionKey, Tags
from .plan import Plan, PlanMetrics
from .system import Ok

MAX_FAILURES = 1024
"""The most components one checkpoint or finish reports as failing."""

Weight = Annotated[float, msgspec.Meta(ge=0, le=10)]
Objective = Literal["min_duration", "max_slack", "min_reconfigurations", "fifo"]
Positive = Annotated[float, msgspec.Meta(gt=0, le=FLOAT_MAX)]
Failures = Annotated[list[Label], msgspec.Meta(max_length=MAX_FAILURES)]


class Weights(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How much each consideration counts when a dynamic strategy orders phases (0 to 10)."""

    duration: Weight = 1.0
    slack: Weight = 1.0
    reconfiguration: Weight = 1.0
    failures: Weight = 1.0


class StrategyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How plans are made and the device shared (``strategy`` in the scheduler's configuration).

    Attributes:
        kind: ``static`` (deterministic, the same plan for the same circuit and
            device) or ``dynamic`` (uses feedback: measured durations, failure
            rates, component health; with none it equals static).
        objectives: What a dynamic strategy orders independent phases by;
            ``fifo`` (circuit order) cannot be combined with the others.
        weights: Their relative weights.
        preempt: Whether a higher-priority job takes the device at the running
            job's next phase boundary.
        max_phase_s: The longest phase a plan may have (a plan with a longer
            one is refused: split its shots).
        max_job_s: The longest job accepted.
        max_wait_s: The longest a higher-priority job may have to wait for the
            device; checked against ``max_phase_s`` (with preemption) or
            ``max_job_s`` (without), so that no configuration allows a
            priority inversion longer than this.
        degrade_failure_rate: A component failing more often than this is
            routed around by the dynamic strategy.
    """

    kind: Literal["static", "dynamic"] = "static"
    objectives: Annotated[list[Objective], msgspec.Meta(max_length=4)] = msgspec.field(
        default_factory=lambda: ["min_duration"]
    )
    weights: Weights = msgspec.field(default_factory=Weights)
    preempt: bool = True
    max_phase_s: Positive = 60.0
    max_job_s: Positive = 3600.0
    max_wait_s: Positive = 120.0
    degrade_failure_rate: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.2

    def __post_init__(self) -> None:
        if not self.objectives:
            raise ValueError("strategy.objectives needs at least one objective")
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"strategy.objectives repeats one: {self.objectives}")
        if "fifo" in self.objectives and len(self.objectives) > 1:
            raise ValueError(
                "strategy.objectives: fifo keeps circuit order and cannot be combined with reordering objectives "
                f"({', '.join(o for o in self.objectives if o != 'fifo')})"
            )
        worst = self.max_phase_s if self.preempt else self.max_job_s
        if worst > self.max_wait_s:
            which = "max_phase_s" if self.preempt else "max_job_s (preempt is off)"
            raise ValueError(
                f"priority inversion: a higher-priority job could wait {worst:g} s for the device ({which}), "
                f"more than max_wait_s = {self.max_wait_s:g} s"
            )
        if self.max_phase_s > self.max_job_s:
            raise ValueError(f"strategy.max_phase_s ({self.max_phase_s:g}) exceeds max_job_s ({self.max_job_s:g})")


class Accepted(Reply, frozen=True, kw_only=True):
    TYPE = "sched.accepted"
    job: JobId
    seq: Count
    position: Count
    """Jobs ahead of it in the queue when it was accepted."""
    created: bool
    """False if this job id, or this ``key``, was submitted before: nothing changed (``job`` names that job)."""


class Submit(Request[Accepted], frozen=True, kw_only=True):
    """Queue a circuit as a job. Acknowledged only once the job is in the store.

    Refused with ``invalid-circuit`` (every problem, with its op) if it cannot
    run on the device. ``job`` lets a client choose the id, so that a repeated
    submission (after a lost reply) is recognised rather than run twice.
    ``key`` does the same for a client that does not choose ids: the same
    submission under a key stored before is answered with that job
    (``created`` False, in whatever state it is; a failed job is not rerun);
    another submission under it is refused with ``exists``. ``tags`` are
    stored with the job (`QueryJobs` finds jobs by them).
    """

    TYPE = "sched.submit"
    REPLY = Accepted
    circuit: Circuit
    job: JobId | None = None
    key: SubmissionKey | None = None
    tags: Tags = msgspec.field(default_factory=list)
    submitter: Label | None = None
    """Who submitted it, as stored with the job; by default the sender. The door sets its client's name."""


class SubmitProcedure(Request[Accepted], frozen=True, kw_only=True):
    """Queue a plan an actor made itself (a calibration sweep), to run like any job.

    The plan is checked (`validate_plan`), stored with the job, and queued as
    planned; its phases usually give heater ``volts`` directly.
    """

    TYPE = "sched.submit_procedure"
    REPLY = Accepted
    job: JobId
    plan: Plan
    priority: Priority = 0
    description: Text = ""


class Validation(Reply, frozen=True, kw_only=True):
    TYPE = "sched.validation"
    ok: bool
    problems: list[CircuitProblem]
    metrics: PlanMetrics | None = None


class Validate(Request[Validation], frozen=True, kw_only=True):
    """Check a circuit against the device without queueing it; every problem, structured."""

    TYPE = "sched.validate"
    REPLY = Validation
    circuit: Circuit


class Cancel(Request[Ok], frozen=True, kw_only=True):
    """Cancel a job: at once if it waits, at its next phase boundary if it runs; ok if it has ended already."""

    TYPE = "sched.cancel"
    REPLY = Ok
    job: JobId
    reason: Reason = "cancelled by request"


class Pause(Request[Ok], frozen=True, kw_only=True):
    """Stop dispatching jobs (a running one finishes its current phase and waits). Survives restarts."""

    TYPE = "sched.pause"
    REPLY = Ok
    reason: Reason = ""


class Resume(Request[Ok], frozen=True, kw_only=True):
    TYPE = "sched.resume"
    REPLY = Ok


class Drained(Reply, frozen=True, kw_only=True):
    TYPE = "sched.drained"
    job: JobId | None
    """The job that was running when the drain began, if one was."""
    timed_out: bool
    """It still runs: it reached no phase boundary within ``timeout_s`` (stopping the lab interrupts it)."""
    queued: Count
    """Jobs left in the queue (stored: queued again at the next start), the preempted one among them."""


class Drain(Request[Drained], frozen=True, kw_only=True):
    """The lab is stopping: refuse new submissions (``draining``), dispatch nothing more, and let the running job
    go back to waiting at its next phase boundary (its frames committed; it resumes at the next start).

    Answered once no job runs (preempted, or it finished), or after ``timeout_s``. There is no undoing it:
    the scheduler drains until it stops.
    """

    TYPE = "sched.drain"
    REPLY = Drained
    timeout_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0


QueuedState = Literal["queued", "planned", "running", "interrupted"]
"""The states of a job on the scheduler's queue: every `protocol.memory.JobState` before its end."""


class QueueEntry(msgspec.Struct, frozen=True, kw_only=True):
    job: JobId
    seq: Count
    priority: Priority
    state: QueuedState
    planned: bool
    next_phase: Index
    phases: Index
    expected_s: float | None
    deadline: float | None


class QueueState(Reply, frozen=True, kw_only=True):
    TYPE = "sched.queue"
    paused: bool
    suspended: dict[str, str]
    """Why dispatch is suspended, by condition."""
    running: str | None
    jobs: list[QueueEntry]
    """In dispatch order: priority, then acceptance."""
    plans_compiled: Count
    plan_cache_hits: Count


class GetQueue(Request[QueueState], frozen=True, kw_only=True):
    TYPE = "sched.get_queue"
    REPLY = QueueState


class SetStrategy(Request[Ok], frozen=True, kw_only=True):
    """Replace the strategy and its weights; validated; plans made from now on use it."""

    TYPE = "sched.set_strategy"
    REPLY = Ok
    strategy: StrategyConfig


class Suspend(Request[Ok], frozen=True, kw_only=True):
    """Suspend dispatch while ``condition`` holds (calibration expired, say); `Unsuspend` clears it."""

    TYPE = "sched.suspend"
    REPLY = Ok
    condition: Label
    reason: Reason


class Unsuspend(Request[Ok], frozen=True, kw_only=True):
    TYPE = "sched.unsuspend"
    REPLY = Ok
    condition: Label


class ReportHealth(Request[Ok], frozen=True, kw_only=True):
    """Components of the device calibration found degraded: plans made from now on avoid them."""

    TYPE = "sched.report_health"
    REPLY = Ok
    device: Label
    modes: Annotated[list[Mode], msgspec.Meta(max_length=MAX_MODES)] = msgspec.field(default_factory=list)
    detectors: Annotated[list[Column], msgspec.Meta(max_length=2 * MAX_MODES)] = msgspec.field(default_factory=list)
    delay_lines: Annotated[list[DelayLine], msgspec.Meta(max_length=MAX_DELAY_LINES)] = msgspec.field(
        default_factory=list
    )


class Assignment(Reply, frozen=True, kw_only=True):
    """The next job for the executor, or ``job = None`` if there is none within the wait."""

    TYPE = "sched.assignment"
    job: JobId | None = None
    plan: Plan | None = None
    start_phase: Index = 0
    """Phases before it were done already (a preempted or interrupted job resumes here)."""
    run: RunMode = msgspec.field(default_factory=RunMode)
    fresh: bool = False
    """Nothing of the job has run before (no journal to resume from): the executor may set up and fire
    its first phase while the job's slots are being allocated."""
    accepting: bool = False
    """The job's acceptance may still be committing (it was dispatched at once): its allocation says so
    (`Allocate` ``accepting``), and the memory actor waits for it. If the acceptance fails, or finds the job
    ended already, the allocation is refused and the job is dropped: it was never accepted."""
    trace: U63 | None = None
    """The trace of the job's submission (the client's request): the executor runs the job under it, so
    that what the run sends and logs is linked to the request that caused it (decision 0015 §3)."""


class JobFinished(Request[Ok], frozen=True, kw_only=True):
    """The executor is done with a job and has stored how it ended (the scheduler takes it off the queue).

    ``phase`` and ``duration_s``: the last phase, when it ended without a
    checkpoint (a finite job's last phase has nothing left to decide).
    """

    TYPE = "sched.job_finished"
    REPLY = Ok
    job: JobId
    state: Literal["completed", "failed", "cancelled", "interrupted"]
    reason: Text = ""
    phase: Index | None = None
    duration_s: Seconds = 0.0
    failures: Failures = msgspec.field(default_factory=list)
    """Components that misbehaved in that phase, as in `Checkpoint`."""


class NextJob(Request[Assignment], frozen=True, kw_only=True):
    """The executor asks for work; waits up to ``wait_s`` for some.

    ``finished``: the job it has just finished, reported in the same message
    (as `JobFinished` would be) when it goes straight on to ask for more.
    """

    TYPE = "sched.next_job"
    REPLY = Assignment
    executor: Label
    wait_s: Annotated[float, msgspec.Meta(ge=0, le=30)] = 1.0
    finished: JobFinished | None = None


class Proceed(Reply, frozen=True, kw_only=True):
    TYPE = "sched.proceed"
    action: Literal["continue", "preempt", "cancel"]
    reason: Text = ""


class Checkpoint(Request[Proceed], frozen=True, kw_only=True):
    """A phase boundary: phase ``phase`` is done (or failed); continue, yield the device, or stop?

    ``duration_s`` and ``failures`` (components that failed: ``mode:3``,
    ``detector:5``, ``line:1``) are the feedback a dynamic strategy uses.
    ``executor`` names who runs the job: a scheduler that restarted while the
    job ran (and read it back as waiting) takes it as the claim again.
    """

    TYPE = "sched.checkpoint"
    REPLY = Proceed
    job: JobId
    phase: Index
    ok: bool = True
    duration_s: Seconds | None = None
    failures: Failures = msgspec.field(default_factory=list)
    executor: Label | None = None


class JobPlanned(Event, frozen=True, kw_only=True):
    TYPE = "sched.job_planned"
    job: JobId
    plan: PlanId
    metrics: PlanMetrics
    cached: bool


class JobDispatched(Event, frozen=True, kw_only=True):
    TYPE = "sched.job_dispatched"
    job: JobId
    executor: Label
    start_phase: Index


class JobPreempted(Event, frozen=True, kw_only=True):
    TYPE = "sched.job_preempted"
    job: JobId
    by: Text
    next_phase: Index


class JobRefused(Event, frozen=True, kw_only=True):
    """A queued job failed before running: its deadline cannot be met, or it cannot be planned any more."""

    TYPE = "sched.job_refused"
    job: JobId
    reason: Text


class QueuePaused(Event, frozen=True, kw_only=True):
    TYPE = "sched.queue_paused"
    reason: Text


class QueueResumed(Event, frozen=True, kw_only=True):
    TYPE = "sched.queue_resumed"


class Suspended(Event, frozen=True, kw_only=True):
    TYPE = "sched.suspended"
    condition: Label
    reason: Text


class Unsuspended(Event, frozen=True, kw_only=True):
    TYPE = "sched.unsuspended"
    condition: Label


SCHEDULER_MESSAGES: Final = (
    Submit,
    Accepted,
    SubmitProcedure,
    Validate,
    Validation,
    Cancel,
    Pause,
    Resume,
    GetQueue,
    QueueState,
    SetStrategy,
    Suspend,
    Unsuspend,
    ReportHealth,
    Drain,
    Drained,
    NextJob,
    Assignment,
    Checkpoint,
    Proceed,
    JobFinished,
    JobPlanned,
    JobDispatched,
    JobPreempted,
    JobRefused,
    QueuePaused,
    QueueResumed,
    Suspended,
    Unsuspended,
)
