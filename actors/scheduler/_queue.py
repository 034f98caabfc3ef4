"""The job queue: priority, FIFO within a priority, pause, suspenders, deadlines, preemption. Sans-IO."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.circuit import Circuit
from protocol.plan import Plan

ACCEPTING_SEQ = 2**62
"""The order of a job whose acceptance has not committed yet: after every stored job (its seq comes later)."""


@dataclass
class QueuedJob:
    job: str
    seq: int
    circuit: Circuit | None
    """None for a procedure: its plan came with it."""
    priority: int
    deadline: float | None
    state: str = "queued"
    """queued, planned, running, interrupted (as in the store)."""
    plan: Plan | None = None
    next_phase: int = 0
    cancel_reason: str | None = None
    planning: bool = False
    fresh: bool = True
    """Never dispatched: nothing of it ran, nothing is journalled."""
    accepting: bool = False
    """Queued (and maybe dispatched) while its acceptance commits: not yet stored, nor answered."""
    executor: str | None = None
    """The executor a running job went to: only it is offered the job again (None: any, after a restart)."""

    @property
    def order(self) -> tuple[int, int]:
        return (-self.priority, self.seq)

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

    def add(self, job: QueuedJob) -> None:
        self.jobs[job.job] = job

    def remove(self, job: str) -> QueuedJob | None:
        if self.running == job:
            self.running = None
        return self.jobs.pop(job, None)

    def release(self, job: QueuedJob) -> None:
        """The running job goes back to waiting (preempted): no executor holds it now."""
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
