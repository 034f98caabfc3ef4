"""The executor actor: asks the scheduler for work and runs one job at a time; the circuit breaker.

The work loop asks the scheduler for the next job (``sched.next_job``, which
also carries the end of the job just finished) and runs it (`JobRun`). Each
job that fails makes the device safe and counts towards the circuit breaker:
after ``breaker_threshold`` failures in a row, dispatch is suspended at the
scheduler (``breaker:DEVICE``) and no work is asked for until a probe of the
device, every ``breaker_probe_s``, finds it answering and its interlock not
tripped.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import trio

from protocol import AwenError, Backoff, Envelope, convert_settings
from protocol.calibration_model import CalibrationUnusable
from protocol.executor import Abort, ExecutorStatus, GetExecutorStatus, JobEnded
from protocol.scheduler import Assignment, JobFinished, NextJob, Suspend, Unsuspend
from runtime import Actor, PeerLostError, RemoteError, RequestTimeout, Runtime, handles, subscribes, traced

from ._config import ExecutorConfig
from ._device import HalDevice
from ._faults import Failed, NotAccepted
from ._run import Ended, JobRun, RunMetrics
from ._volts import PhaseVolts

log = logging.getLogger("awen.executor")

ASK_AGAIN = Backoff(first=0.5, longest=0.5, jitter=0)
"""Asking the scheduler for work again after it did not answer: every half second, until it does."""


class ExecutorActor(Actor):
    """Runs one job at a time on its device. Args: `ExecutorConfig` keys."""

    KIND = "executor"

    def __init__(self, name: str, runtime: Runtime, **config: Any) -> None:
        super().__init__(name, runtime)
        self.config = convert_settings(config, ExecutorConfig, source=f"{name} configuration")
        self.volts = PhaseVolts(self, self.config)
        self.device = HalDevice(self, self.config, self.volts)
        self.current: JobRun | None = None
        """The job under way."""
        self.failures = 0
        """Jobs failed in a row: at ``breaker_threshold`` the breaker opens."""
        self.jobs_run = 0
        self.run_metrics = RunMetrics(self.metrics)
        self._finished: JobFinished | None = None
        """The job just finished, until the scheduler has heard of it."""

    @property
    def job(self) -> str | None:
        return None if self.current is None else self.current.job

    # --- the work loop ------------------------------------------------------------------------

    async def main(self) -> None:
        for peer in (self.config.scheduler, self.config.memory, self.config.hal):
            await self.wait_peer(peer)
        unanswered = 0
        while True:
            if self.failures >= self.config.breaker_threshold:
                await self._report_finished()  # no work is asked for until a probe succeeds
                await self._probe()
                continue
            ask = NextJob(executor=self.name, wait_s=2.0, finished=self._finished)
            self._finished = None  # on its way
            try:
                with trio.fail_after(30):
                    assignment = await self.request(self.config.scheduler, ask)
            except (AwenError, trio.TooSlowError) as exc:
                self._finished = ask.finished  # perhaps never arrived: told again with the next request
                log.info("%s: no work from %s (%s)", self.name, self.config.scheduler, exc)
                await trio.sleep(ASK_AGAIN.delay(unanswered))
                unanswered += 1
                continue
            unanswered = 0
            if assignment.job is not None and assignment.plan is not None:
                await self.run_job(assignment)

    async def run_job(self, assignment: Assignment) -> None:
        """Run one job to its end, under the trace of its submission: what it sends and logs is linked to it."""
        with traced(assignment.trace, assignment.job):
            await self._run_job(assignment)

    async def _run_job(self, assignment: Assignment) -> None:
        """Run one job to its end; record the end, count it towards the breaker, tell who needs to know."""
        run = self.current = JobRun(self, self.config, self.device, self.volts, assignment)
        began = time.monotonic()
        phases = len(run.plan.phases)
        how = "fresh" if assignment.fresh else "resumed"
        log.info("%s: runs %s from phase %d of %d (%s)", self.name, run.job, assignment.start_phase, phases, how)
        ended = Ended("failed", "", 0)
        try:
            ended = await run.run()
        except NotAccepted as exc:
            # Nothing of it was allocated or stored, and nobody was told it was accepted: no end to record.
            log.warning("%s: dropped %s, which the store did not accept: %s", self.name, run.job, exc)
            self.current = None
            return
        except trio.TooSlowError:
            ended = Ended("failed", f"the job took longer than job_timeout_s = {self.config.job_timeout_s:g} s", 0)
        except Failed as exc:
            ended = Ended("failed", exc.reason, 0)
        except (PeerLostError, RequestTimeout) as exc:
            ended = Ended("failed", f"lost contact with a peer: {exc}", 0)
        except RemoteError as exc:  # the store refused results, or the scheduler no longer knows the job
            ended = Ended("failed", str(exc), 0)
        except CalibrationUnusable as exc:  # e.g. a job queued for a chip with another number of heaters
            ended = Ended("failed", exc.message, 0)
        if ended.state == "failed":
            await self._failed(run.job, ended.reason)
        else:
            self.failures = 0
        if ended.state == "preempted":
            await run.free()  # the journal stays in the store; the job resumes from it
        else:
            self._finished = await run.finish(ended)
        self.jobs_run += 1
        seconds = time.monotonic() - began
        log.info("%s: %s %s: %d frames in %.3f s", self.name, run.job, ended.state, ended.frames, seconds)
        self.run_metrics.job.observe(seconds)
        self.publish_soon(
            JobEnded(job=run.job, state=ended.state, reason=ended.reason, frames=ended.frames, seconds=seconds)
        )
        self.current = None

    # --- the circuit breaker ------------------------------------------------------------------

    @property
    def _breaker_condition(self) -> str:
        return f"breaker:{self.config.device}"

    async def _failed(self, job: str, reason: str) -> None:
        """A job failed: the device is made safe, and enough failures in a row open the breaker."""
        self.failures += 1
        log.error("%s: job %s failed: %s", self.name, job, reason)
        await self.device.safe()
        if self.failures == self.config.breaker_threshold:
            why = (
                f"circuit breaker open: {self.failures} jobs in a row failed on {self.config.device} (last: "
                f"{reason}); probing it every {self.config.breaker_probe_s:g} s"
            )
            log.error("%s: %s", self.name, why)
            await self._tell_scheduler(Suspend(condition=self._breaker_condition, reason=why))

    async def _probe(self) -> None:
        """The breaker is open: fail fast until the device answers a status query."""
        await trio.sleep(self.config.breaker_probe_s)
        try:
            with trio.fail_after(10):
                status = await self.device.status()
        except (AwenError, trio.TooSlowError) as exc:
            log.warning("%s: breaker open; probe failed: %s", self.name, exc)
            return
        if status.interlock:
            log.warning("%s: breaker open; the interlock is still tripped", self.name)
            return
        log.info("%s: probe succeeded; breaker closed", self.name)
        self.failures = 0
        await self._tell_scheduler(Unsuspend(condition=self._breaker_condition))

    async def _tell_scheduler(self, request: Any) -> None:
        """Suspend or resume dispatch: new work fails fast at the queue, and the queue says why."""
        try:
            await self.request(self.config.scheduler, request)
        except AwenError as exc:
            log.error("%s: could not tell %s: %s", self.name, self.config.scheduler, exc)

    # --- the scheduler hears of the end -------------------------------------------------------

    async def _report_finished(self) -> None:
        """Tell the scheduler of the job just finished, when no request for work will carry it."""
        finished, self._finished = self._finished, None
        if finished is None:
            return
        try:
            await self.request(self.config.scheduler, finished)
        except AwenError as exc:
            log.error("%s: could not report %s as %s: %s", self.name, finished.job, finished.state, exc)

    async def teardown(self) -> None:
        with trio.move_on_after(2):
            await self._report_finished()

    # --- events and requests ------------------------------------------------------------------

    @subscribes("hal.")
    def _device_event(self, body: Any, env: Envelope) -> None:
        if getattr(body, "device", None) == self.config.device and env.type != "hal.temperature":
            self.device.forget()

    @handles(Abort)
    def _abort_job(self, msg: Abort, env: Envelope) -> None:
        if self.current is None or self.current.job != msg.job:
            raise AwenError(f"{msg.job} is not running here (running: {self.job or 'nothing'})", field="job")
        self.current.abort(msg.reason)

    @handles(GetExecutorStatus)
    def _status(self, msg: GetExecutorStatus, env: Envelope) -> ExecutorStatus:
        state: Literal["idle", "running", "breaker-open"] = "running" if self.current else "idle"
        if self.failures >= self.config.breaker_threshold:
            state = "breaker-open"
        phase = None if self.current is None else self.current.phase
        return ExecutorStatus(
            state=state, job=self.job, phase=phase, breaker_failures=self.failures, jobs_run=self.jobs_run
        )
