"""Messages of the executor actor: progress of the running job, abort, status."""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from ._message import Count, Event, Index, Reason, Reply, Request, Text
from .memory import CalibrationVersion, FinalState, JobId, PlanId
from .system import Ok

EndState = FinalState | Literal["preempted"]
"""How the executor's run of a job ends: as the job ends, or ``preempted`` (it resumes later)."""


class ExecutorStatus(Reply, frozen=True, kw_only=True):
    TYPE = "exec.status"
    state: Literal["idle", "running", "breaker-open"]
    job: JobId | None
    phase: Index | None
    breaker_failures: Count
    """Consecutive device failures; at the threshold the breaker opens and new work fails fast."""
    jobs_run: Count


class GetExecutorStatus(Request[ExecutorStatus], frozen=True, kw_only=True):
    TYPE = "exec.get_status"
    REPLY = ExecutorStatus


class Abort(Request[Ok], frozen=True, kw_only=True):
    """Stop the running job now (within its current phase): the device goes to its safe state,
    the results written so far are kept (partial), and the job ends cancelled with ``reason``."""

    TYPE = "exec.abort"
    REPLY = Ok
    job: JobId
    reason: Reason = "aborted by request"


class Progress(Event, frozen=True, kw_only=True):
    TYPE = "exec.progress"
    job: JobId
    phase: Index
    phases: Index
    shots_done: Count
    shots_total: Count
    eta_s: float
    """Estimated time left for the job, from the rate so far."""


class Rates(Event, frozen=True, kw_only=True):
    """Live count rates of a continuous job: clicks per second on every detector column of the batch."""

    TYPE = "exec.rates"
    job: JobId
    phase: Index
    shots: Count
    seconds: float
    rates: list[float]
    registers: dict[str, list[float]]
    """Per register: the fraction of shots that read each value."""


class JobStarted(Event, frozen=True, kw_only=True):
    TYPE = "exec.job_started"
    job: JobId
    plan: PlanId
    calibration: CalibrationVersion | None
    start_phase: Index
    resumed: bool


class JobEnded(Event, frozen=True, kw_only=True):
    TYPE = "exec.job_ended"
    job: JobId
    state: EndState
    reason: Text
    frames: Count
    seconds: float


class PhaseTimes(msgspec.Struct, frozen=True, kw_only=True):
    configure_s: float
    shots_s: float
    store_s: float


class PhaseDone(Event, frozen=True, kw_only=True):
    """Feedback: how long a phase really took, and where the time went."""

    TYPE = "exec.phase_done"
    job: JobId
    phase: Index
    expected_s: float
    measured_s: float
    times: PhaseTimes
    retries: Count


EXECUTOR_MESSAGES: Final = (
    GetExecutorStatus,
    ExecutorStatus,
    Abort,
    Progress,
    Rates,
    JobStarted,
    JobEnded,
    PhaseDone,
)
