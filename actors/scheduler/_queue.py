"""The job queue: each job's phase, priority, FIFO within a priority, pause, suspenders, deadlines, preemption. Sans-IO.

A queued job's life is one `JobPhase`, moved on only by `QueuedJob.move`
along the table `_NEXT`, which refuses every other move. The usual life is
QUEUED -> PLANNED -> RUNNING, and RUNNING -> RESUMABLE -> RUNNING when it is
preempted; with its plan at hand, ACCEPTING -> PLANNED, or ACCEPTING ->
ACCEPTING_RUNNING -> RUNNING when an executor was waiting (decision 0009);
read back after a restart, INTERRUPTED -> RESUMABLE -> RUNNING. A job
leaves the queue (completed, failed, cancelled, withdrawn) from any phase:
`JobQueue.remove`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from protocol import IllegalTransition
from protocol.circuit import Circuit
from protocol.memory import JobState
from protocol.plan import Plan
from protocol.scheduler import QueuedState

ACCEPTING_SEQ = 2**62
"""The order of a job whose acceptance has not committed yet: after every stored job (its seq comes later)."""


class JobPhase(enum.Enum):
    """Where a job in the queue is, as the scheduler sees it: what the store says, and whether anything of it ran."""

    ACCEPTING = "accepting"
    """Queued with its plan while its acceptance commits (decision 0009): neither stored nor answered yet."""
    ACCEPTING_RUNNING = "accepting-running"
    """Handed to an executor while its acceptance commits; the executor's first write waits for it."""
    QUEUED = "queued"
    """Stored; waiting for its plan (only ``mem.put_job`` stores a job queued: nothing of it ran)."""
    PLANNED = "planned"
    """Stored and planned, never handed out: nothing of it ran, nothing is journalled (``fresh``)."""
    RUNNING = "running"
    """An executor holds it; the executor marks it running in the store with its allocation."""
    RESUMABLE = "resumable"
    """Stored planned, and ran before (preempted, or read back so after a restart): it resumes from its journal."""
    INTERRUPTED = "interrupted"
    """Read back after a restart of the memory actor, which found it running: planned again before it resumes."""

    @property
    def stored(self) -> QueuedState:
        """The job's state in the store (an accepting job's acceptance stores it planned)."""
        return _STORED[self]

    @property
    def fresh(self) -> bool:
        """Nothing of it ran: the executor may fire its first phase before it allocates (decision 0009)."""
        return self in (JobPhase.ACCEPTING, JobPhase.QUEUED, JobPhase.PLANNED)

    @property
    def accepting(self) -> bool:
        """Its acceptance has not committed yet: the client has not been answered, the queue does not show it."""
        return self in (JobPhase.ACCEPTING, JobPhase.ACCEPTING_RUNNING)

    @classmethod
    def read_back(cls, state: JobState, frames: int) -> JobPhase:
        """The phase of a job a restarted scheduler reads back from the store (with its committed frames)."""
        if state == "planned":
            return cls.PLANNED if frames == 0 else cls.RESUMABLE
        return cls(state)


class JobEvent(enum.Enum):
    """What moves a job on (`QueuedJob.move`)."""

    ACCEPTED = "accepted"
    """Its acceptance committed (``mem.put_job``)."""
    PLANNED = "planned"
    """Its plan is stored and the store says planned."""
    CLAIMED = "claimed"
    """An executor took it: handed out by ``sched.next_job``, or reported running after a restart."""
    PREEMPTED = "preempted"
    """It went back to waiting at a phase boundary."""


_STORED: dict[JobPhase, QueuedState] = {
    JobPhase.ACCEPTING: "planned",
    JobPhase.ACCEPTING_RUNNING: "running",
    JobPhase.QUEUED: "queued",
    JobPhase.PLANNED: "planned",
    JobPhase.RUNNING: "running",
    JobPhase.RESUMABLE: "planned",
    JobPhase.INTERRUPTED: "interrupted",
}

_NEXT: dict[tuple[JobPhase, JobEvent], JobPhase] = {
    (JobPhase.ACCEPTING, JobEvent.ACCEPTED): JobPhase.PLANNED,
    (JobPhase.ACCEPTING, JobEvent.CLAIMED): JobPhase.ACCEPTING_RUNNING,
    (JobPhase.ACCEPTING_RUNNING, JobEvent.ACCEPTED): JobPhase.RUNNING,
    # The executor's checkpoint overtook the acceptance's reply: its first write had waited for the commit.
    (JobPhase.ACCEPTING_RUNNING, JobEvent.PREEMPTED): JobPhase.RESUMABLE,
    (JobPhase.QUEUED, JobEvent.PLANNED): JobPhase.PLANNED,
    (JobPhase.INTERRUPTED, JobEvent.PLANNED): JobPhase.RESUMABLE,
    (JobPhase.INTERRUPTED, JobEvent.CLAIMED): JobPhase.RUNNING,  # a procedure: its plan came with it
    (JobPhase.PLANNED, JobEvent.CLAIMED): JobPhase.RUNNING,
    (JobPhase.RESUMABLE, JobEvent.CLAIMED): JobPhase.RUNNING,
    # Read back running beside the job the queue holds (the store had two running): handed out again.
    (JobPhase.RUNNING, JobEvent.CLAIMED): JobPhase.RUNNING,
    (JobPhase.RUNNING, JobEvent.PREEMPTED): JobPhase.RESUMABLE,
}
"""Every move a job may make: its phase and what happened, to its next phase."""


@dataclass(eq=False)
class QueuedJob:
    """A job in the queue. Compared (and hashed) by identity: a resubmitted job is another one."""

    job: str
    seq: int
    circuit: Circuit | None
    """None for a procedure: its plan came with it."""
    priority: int
    deadline: float | None
    phase: JobPhase
    plan: Plan | None = None
    """The plan it runs with; None while it is (to be) planned again (the store may still say planned)."""
    next_phase: int = 0
    cancel_reason: str | None = None
    """Cancelled while it runs: the executor learns it at the next phase boundary."""
    executor: str | None = None
    """The executor a running job went to: only it is offered the job again (None: any, after a restart)."""
    trace: int | None = None
    """The trace of its submission (the client's request): it runs under it (`Assignment.trace`)."""

    @property
    def order(self) -> tuple[int, int]:
        return (-self.priority, self.seq)

    def move(self, event: JobEvent) -> None:
        """Move on by ``event``; `IllegalTransition` if `_NEXT` has no such move from its phase."""
        after = _NEXT.get((self.phase, event))
        if after is None:
            raise IllegalTransition(f"job {self.job} is {self.phase.value}: it cannot be {event.value}")
        self.phase = after

    def can(self, event: JobEvent) -> bool:
        """Whether ``event`` moves it on from its phase (`move` would not refuse it)."""
        return (self.phase, event) in _NEXT

    def accepted(self, seq: int) -> None:
        """Its acceptance committed as number ``seq``: it takes its place in the queue, and shows."""
        self.seq = seq
        if self.phase.accepting:
            self.move(JobEvent.ACCEPTED)

    def remaining_s(self) -> float | None:
        if self.plan is None:
            return None
        return sum(p.duration_s for p in self.plan.phases[self.next_phase :])


@dataclass
class JobQueue:
    jobs: dict[str, QueuedJob] = field(default_factory=dict)
    paused: bool = False
    suspended: dict[str, str] = field(default_factory=dict)
    running: str | None = None
    """The job an executor holds (at most one: the device runs one job at a time)."""

    def add(self, job: QueuedJob) -> None:
        self.jobs[job.job] = job

    def remove(self, job: str) -> QueuedJob | None:
        if self.running == job:
            self.running = None
        return self.jobs.pop(job, None)

    def claim(self, job: QueuedJob, executor: str) -> None:
        """``executor`` holds the job now: no other is offered it, nor the device, until it is released."""
        job.move(JobEvent.CLAIMED)
        self.running, job.executor = job.job, executor

    def release(self, job: QueuedJob) -> None:
        """The running job goes back to waiting (preempted): no executor holds it now."""
        job.move(JobEvent.PREEMPTED)
        job.executor = None
        if self.running == job.job:
            self.running = None

    def ordered(self) -> list[QueuedJob]:
        """Every job in dispatch order: priority (high first), then acceptance."""
        return sorted(self.jobs.values(), key=lambda j: j.order)

    def waiting(self) -> list[QueuedJob]:
        return [j for j in self.ordered() if j.job != self.running]

    @property
    def dispatching(self) -> bool:
        return not self.paused and not self.suspended

    def position(self, job: str) -> int:
        """Jobs waiting ahead of this one (none when it is running)."""
        return next((i for i, j in enumerate(self.waiting()) if j.job == job), 0)

    def next_ready(self) -> QueuedJob | None:
        """The job to run next, if dispatch is on, the device free, and the first in line planned.

        The first in line is waited for even if a later job is planned already:
        order is priority, then acceptance, never "whatever compiled first".
        """
        if not self.dispatching or self.running is not None:
            return None
        waiting = self.waiting()
        if not waiting or waiting[0].plan is None:
            return None
        return waiting[0]

    def preemptor(self) -> QueuedJob | None:
        """A waiting job with a higher priority than the running one, if any."""
        if self.running is None or self.running not in self.jobs:
            return None
        running = self.jobs[self.running]
        waiting = self.waiting()
        if waiting and waiting[0].priority > running.priority:
            return waiting[0]
        return None

    def hopeless(self, now: float) -> list[tuple[QueuedJob, str]]:
        """Waiting jobs that can no longer meet their deadline even if started now, with why."""
        found = []
        for job in self.waiting():
            if job.deadline is None:
                continue
            left = job.deadline - now
            need = job.remaining_s()
            if left <= 0:
                found.append((job, f"its deadline passed {-left:.1f} s ago before it could run"))
            elif need is not None and need > left:
                found.append((job, f"it cannot meet its deadline: it needs {need:.3g} s and {left:.3g} s are left"))
        return found
