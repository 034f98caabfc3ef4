"""The executor's ``config`` table."""

from __future__ import annotations

import msgspec


class ExecutorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The executor's ``config`` table.

    Attributes:
        device: The device (as the HAL names it).
        scheduler, memory, hal: The actors it works with.
        batch_shots: Shots per frame: results are committed (and a crash loses at most) this many at a time.
            A frame holds counts per distinct pattern, its size the same for any number of shots
            (decision 0017 §6), so the batch trades each commit's cost (a few ms) against the
            work a crash loses: 50,000 shots are 50 ms at the simulator's 1 MHz.
        retries: Tries after the first for a transient error.
        backoff_s, backoff_max_s: The first retry's delay, doubling up to this (with jitter).
        breaker_threshold: Consecutive failed jobs that open the circuit breaker.
        breaker_probe_s: How often an open breaker probes the device.
        phase_timeout_s, job_timeout_s: Longest a phase (beyond its expected duration) and a job may take.
    """

    device: str = "chip"
    scheduler: str = "scheduler"
    memory: str = "memory"
    hal: str = "hal"
    batch_shots: int = msgspec.field(default=50_000)
    retries: int = 4
    backoff_s: float = 0.05
    backoff_max_s: float = 2.0
    breaker_threshold: int = 3
    breaker_probe_s: float = 2.0
    phase_timeout_s: float = 120.0
    job_timeout_s: float = 3600.0
