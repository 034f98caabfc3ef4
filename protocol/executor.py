"""Messages of the executor actor: progress of the running job, abort, status."""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from ._message import Event, Reply, Request
from .memory import JobId
from .system import Ok


class ExecutorStatus(Reply, frozen=True, kw_only=True):
    TYPE = "exec.status"
    state: Literal["idle", "running", "breaker-open"]
    job: str | None
    phase: int | None
    breaker_failures: int
    """Consecutive device failures; at the threshold the breaker opens and new work fails fast."""
    jobs_run: int


class GetExecutorStatus(Request[ExecutorStatus], frozen=True, kw_only=True):
    TYPE = "exec.get_status"
    REPLY = ExecutorStatus


class Abort(Request[Ok], frozen=True, kw_only=True):
    """Stop the running job now (within its current phase): the device goes to its safe state,
    the results written so far are kept (partial), and the job ends cancelled with ``reason``."""

    TYPE = "exec.abort"
    REPLY = Ok
    job: JobId
    reason: str = "aborted by request"


class Progress(Event, frozen=True, kw_only=True):
    TYPE = "exec.progress"
    job: str
    phase: int
    phases: int
    shots_done: int
    shots_total: int
    eta_s: float
    """Estimated time left for the job, from the rate so far."""


class Rates(Event, frozen=True, kw_only=True):
    """Live count rates of a continuous job: clicks per second on every detector column of the batch."""

    TYPE = "exec.rates"
    job: str
    phase: int
    shots: int
    seconds: float
    rates: list[float]
    registers: dict[str, list[float]]
    """Per register: the fraction of shots that read each value."""


class JobStarted(Event, frozen=True, kw_only=True):
    TYPE = "exec.job_started"
    job: str
    plan: str
    calibration: int | None
    start_phase: int
    resumed: bool


class JobEnded(Event, frozen=True, kw_only=True):
    TYPE = "exec.job_ended"
    job: str
    state: Literal["completed", "failed", "cancelled", "preempted"]
    reason: str
    frames: int
    seconds: float


class PhaseTimes(msgspec.Struct, frozen=True, kw_only=True):
    configure_s: float
    shots_s: float
    store_s: float


class PhaseDone(Event, frozen=True, kw_only=True):
    """Feedback: how long a phase really took, and where the time went."""

    TYPE = "exec.phase_done"
    job: str
    phase: int
    expected_s: float
    measured_s: float
    times: PhaseTimes
    retries: int


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
