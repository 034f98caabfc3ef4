"""Our lab script: run a sweep to the end, or say clearly why it could not be done.

Every point is submitted under a key made of the sweep's name and the point, so running the script
again after a crash picks up the jobs already done instead of measuring them twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from awen import JobFailed, Lab, Result


class SweepFailed(RuntimeError):
    """A point of the sweep failed every time it was tried."""

    def __init__(self, point: int, reason: str) -> None:
        self.point, self.reason = point, reason
        super().__init__(f"point {point} failed: {reason}")


class ChipInterlocked(SweepFailed):
    """The chip's interlock tripped: nothing should be retried until someone has looked at it."""


def run_sweep(
    lab: Lab, name: str, circuits: Sequence[Any], *, retries: int = 2, timeout: float = 120.0
) -> list[Result]:
    """Every circuit's result, in order; points that fail are tried again (``retries`` more times each).

    Raises:
        ChipInterlocked: a point failed because the interlock tripped (never retried).
        SweepFailed: a point failed ``retries + 1`` times.
    """
    jobs = [lab.submit(circuit, key=f"{name}/{i}/0") for i, circuit in enumerate(circuits)]
    results: list[Result] = []
    for i, job in enumerate(jobs):
        attempt = 0
        while True:
            try:
                results.append(job.wait(timeout=timeout))
                break
            except JobFailed as exc:
                if "interlock" in exc.reason:
                    raise ChipInterlocked(i, exc.reason) from exc
                attempt += 1
                if attempt > retries:
                    raise SweepFailed(i, exc.reason) from exc
                job = lab.submit(circuits[i], key=f"{name}/{i}/{attempt}")
    return results
