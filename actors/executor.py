"""The executor actor: runs plans on the device through the HAL, frame by frame, and journals them.

It pulls work from the scheduler (``sched.next_job``). For each job it pins
the calibration version the plan was made with, allocates the job's slots in
the memory actor (one histogram per register per phase, and a journal in the
state buffer: phases done, shots done in the current phase), and for each
phase from where the journal says: converts target phases to volts, sets the
heaters, inputs, delay lines and feed-forward rules, waits for the heaters to
settle, and fires the phase's shots in batches. Each batch is one frame,
committed with the journal before the next: after a crash or ``kill -9`` the
job resumes at the first uncommitted batch, nothing lost and nothing counted
twice.

Faults: transient errors (link, timeout, device errors) are retried with
exponential backoff and jitter; a device that keeps failing opens a circuit
breaker that fails new work fast until a probe succeeds; phase and job
timeouts; an interlock fails the job at once. Whatever happens, the job ends
completed, cancelled or failed with a reason, its committed results kept
(partial unless completed), and the device is left safe when a job fails.

Configured in the system file::

    [[actor]]
    name = "executor"
    factory = "actors.executor:ExecutorActor"
    config = { device = "chip", batch_shots = 10000 }
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Any, Literal, NamedTuple

import msgspec
import numpy as np
import trio

from protocol import AwenError, Envelope, ErrorCode, convert_settings
from protocol.calibration_model import CalibrationModel
from protocol.executor import (
    Abort,
    ExecutorStatus,
    GetExecutorStatus,
    JobEnded,
    JobStarted,
    PhaseDone,
    PhaseTimes,
    Progress,
    Rates,
)
from protocol.hal import ConfigureInputs, GetDeviceStatus, Program, ReadPowers, RunShots, SafeState, SetHeaters
from protocol.memory import Allocate, Free, GetCalibration, Read, SetJobState, SlotSpec, SlotValue, Write
from protocol.mesh import clements_layout
from protocol.plan import Phase, Plan
from protocol.scheduler import Assignment, Checkpoint, JobFinished, NextJob, Suspend, Unsuspend
from runtime import Actor, PeerLostError, RemoteError, RequestTimeout, Runtime, handles, subscribes

log = logging.getLogger("awen.executor")

TRANSIENT = {
    ErrorCode.LINK_ERROR,
    ErrorCode.TIMEOUT,
    ErrorCode.DEVICE_ERROR,
    ErrorCode.PEER_LOST,
    ErrorCode.UNAVAILABLE,
    ErrorCode.STATE_CHANGED,
    ErrorCode.NOT_READY,
}
"""Error codes worth another try: the link, a slow reply, a device error from a glitch, a device not
connected yet, and another client changing the device under the job (it is set up again first)."""

GONE = {ErrorCode.ACTOR_STOPPED, ErrorCode.PEER_LOST}
"""Answers that say the peer itself went away (it stopped before answering): the job waits for it to come back."""

MAX_RESUMES_WITHOUT_PROGRESS = 10
"""Interruptions in a row after which no frame was committed: then the job fails rather than loop."""


class ExecutorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The executor's ``config`` table.

    Attributes:
        device: The device (as the HAL names it).
        scheduler, memory, hal: The actors it works with.
        batch_shots: Shots per frame: results are committed (and a crash loses at most) this many at a time.
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
    batch_shots: int = msgspec.field(default=10_000)
    retries: int = 4
    backoff_s: float = 0.05
    backoff_max_s: float = 2.0
    breaker_threshold: int = 3
    breaker_probe_s: float = 2.0
    phase_timeout_s: float = 120.0
    job_timeout_s: float = 3600.0


class JobAborted(AwenError):
    code = ErrorCode.BAD_REQUEST


class _Ended(NamedTuple):
    """How a run of a job ended; ``recorded``: its last frame stored the end already (``mem.write`` finish)."""

    state: str
    reason: str
    frames: int
    recorded: bool = False
    phase: int | None = None
    duration_s: float = 0.0
    failures: tuple[str, ...] = ()


class _StateChanged(Exception):
    """Someone else changed the device while this executor was setting it up."""


class _PeerDown(Exception):
    """An actor the job needs died (or stopped answering): the job resumes from its journal once it is back."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"{peer}: {reason}")
        self.peer = peer


class _Failed(Exception):
    """Ends a job as failed with a reason (the device is made safe)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _NotAccepted(Exception):
    """A job dispatched while its acceptance committed was refused by the store: it was never accepted."""


VOLTS_CACHE = 4096
"""Phases whose heater voltages the executor keeps (a repeated circuit skips the conversion)."""

JOINT = "joint"
"""The slot of every register of a phase together (their bits in plan order): joint statistics."""
MAX_JOINT_BITS = 16


def _joint_bits(phase: Phase) -> int:
    return sum(len(r.columns) for r in phase.registers)


def register_slot(phase: int, register: str) -> str:
    return f"p{phase}.{register}"


class ExecutorActor(Actor):
    """Runs one job at a time on its device. Args: `ExecutorConfig` keys."""

    KIND = "executor"

    def __init__(self, name: str, runtime: Runtime, **config: Any) -> None:
        super().__init__(name, runtime)
        self.config = convert_settings(config, ExecutorConfig, source=f"{name} configuration")
        self.job: str | None = None
        self.phase: int | None = None
        self.failures = 0
        self.jobs_run = 0
        self._abort: str | None = None
        self._aborted = trio.Event()
        self._configured: tuple[Any, ...] | None = None
        self._volts: np.ndarray | None = None
        """What the device is known to be set to (heaters; inputs and programs in ``_configured``)."""
        self._version: int | None = None
        """The HAL's state version of the device as this executor last left it: every request that
        relies on what the executor set carries it, and the HAL refuses it (``state-changed``) under
        the device's lock if anyone changed the device since."""
        self._models: dict[int, CalibrationModel] = {}
        self._phase_volts: dict[tuple[str, int, int], np.ndarray] = {}
        self._rng = random.Random()
        self._committed = 0
        """Frames this executor has committed (all jobs): whether an interrupted job made progress."""
        self._finished: JobFinished | None = None
        self._failing: set[str] = set()
        """Components that misbehaved in the current phase (``mode:3``): the scheduler's feedback."""
        """The job just finished, until the scheduler has heard of it."""

    # --- the work loop ------------------------------------------------------------------------

    async def main(self) -> None:
        for peer in (self.config.scheduler, self.config.memory, self.config.hal):
            await self.wait_peer(peer)
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
                await trio.sleep(0.5)
                continue
            if assignment.job is not None and assignment.plan is not None:
                await self.run_job(assignment)

    async def _probe(self) -> None:
        """The breaker is open: fail fast until the device answers a status query."""
        await trio.sleep(self.config.breaker_probe_s)
        try:
            with trio.fail_after(10):
                status = await self.request(self.config.hal, GetDeviceStatus(device=self.config.device))
        except (AwenError, trio.TooSlowError) as exc:
            log.warning("%s: breaker open; probe failed: %s", self.name, exc)
            return
        if status.interlock:
            log.warning("%s: breaker open; the interlock is still tripped", self.name)
            return
        log.info("%s: probe succeeded; breaker closed", self.name)
        self.failures = 0
        await self._tell_scheduler(Unsuspend(condition=self._breaker_condition))

    async def run_job(self, assignment: Assignment) -> None:
        job, plan = assignment.job, assignment.plan
        assert job is not None
        assert plan is not None
        self.job, self._abort, self._aborted = job, None, trio.Event()
        began = time.monotonic()
        ended = _Ended("failed", "", 0)
        try:
            ended = await self._run_through_interruptions(job, plan, assignment)
        except _NotAccepted as exc:
            # Nothing of it was allocated or stored, and nobody was told it was accepted: no end to record.
            log.warning("%s: dropped %s, which the store did not accept: %s", self.name, job, exc)
            self.job = self.phase = None
            return
        except trio.TooSlowError:
            ended = _Ended("failed", f"the job took longer than job_timeout_s = {self.config.job_timeout_s:g} s", 0)
        except _Failed as exc:
            ended = _Ended("failed", exc.reason, 0)
        except (PeerLostError, RequestTimeout) as exc:
            ended = _Ended("failed", f"lost contact with a peer: {exc}", 0)
        except RemoteError as exc:  # the store refused results, or the scheduler no longer knows the job
            ended = _Ended("failed", str(exc), 0)
        state, reason = ended.state, ended.reason
        if state == "failed":
            self.failures += 1
            log.error("%s: job %s failed: %s", self.name, job, reason)
            await self._safe()
            if self.failures == self.config.breaker_threshold:
                why = (
                    f"circuit breaker open: {self.failures} jobs in a row failed on {self.config.device} (last: "
                    f"{reason}); probing it every {self.config.breaker_probe_s:g} s"
                )
                log.error("%s: %s", self.name, why)
                await self._tell_scheduler(Suspend(condition=self._breaker_condition, reason=why))
        else:
            self.failures = 0
        if state == "preempted":
            await self._free(job)  # the journal stays in the store; the job resumes from it
        else:
            await self._finish(job, ended)
        self.jobs_run += 1
        seconds = time.monotonic() - began
        self.publish_soon(JobEnded(job=job, state=state, reason=reason, frames=ended.frames, seconds=seconds))  # type: ignore[arg-type]
        self.job = self.phase = None

    async def _run_through_interruptions(self, job: str, plan: Plan, assignment: Assignment) -> _Ended:
        """Run the job; when an actor it needs dies, wait for it and resume from the journal.

        Whatever died (memory and the job's slots with it, the HAL and the
        device's set-up, the scheduler and its claim), the state is rebuilt
        the same way an executor that restarts rebuilds it: allocate the job's
        slots again with ``resume``, read the journal the store committed, set
        the device up again and go on at the first uncommitted batch. A batch
        that was not committed is fired again, so every shot counts once.
        The job timeout counts running, not waiting for an actor to come back.
        """
        without_progress = 0
        while True:
            committed_before = self._committed
            try:
                with trio.fail_after(self.config.job_timeout_s):
                    return await self._run(job, plan, assignment)
            except _PeerDown as down:
                without_progress = 0 if self._committed > committed_before else without_progress + 1
                if without_progress > MAX_RESUMES_WITHOUT_PROGRESS:
                    raise _Failed(f"interrupted {without_progress} times in a row without progress ({down})") from None
                log.warning(
                    "%s: %s is interrupted (%s); it resumes from its journal once %s is back",
                    self.name,
                    job,
                    down,
                    down.peer,
                )
                self._forget_device_state()
                if down.peer != self.config.hal:  # with the HAL gone, the device's watchdog makes it safe
                    with trio.move_on_after(2):
                        await self._safe()
                await self.wait_peer(down.peer)
                await trio.sleep(min(self.config.backoff_max_s, self.config.backoff_s * 2**without_progress))
                assignment = msgspec.structs.replace(assignment, fresh=False)

    async def _ask(self, peer: str, request: Any) -> Any:
        """A request to an actor the job needs: if it is lost or silent, the job is interrupted (`_PeerDown`)."""
        try:
            return await self.request(peer, request)
        except (PeerLostError, RequestTimeout) as exc:
            raise _PeerDown(peer, str(exc)) from None
        except RemoteError as exc:
            if exc.code in GONE:
                raise _PeerDown(peer, exc.message) from None
            raise

    async def _finish(self, job: str, ended: _Ended) -> None:
        """Store how the job ended (unless its last frame did) and free its slots; the scheduler hears of it
        with the next request for work (`NextJob` ``finished``), or at once if none follows."""
        if not ended.recorded:
            end = SetJobState(job=job, state=ended.state, reason=ended.reason)  # type: ignore[arg-type]
            for _ in range(MAX_RESUMES_WITHOUT_PROGRESS):
                try:
                    await self.request(self.config.memory, end)
                except (PeerLostError, RequestTimeout) as exc:  # the end must be stored: wait for the store
                    log.warning("%s: storing how %s ended: %s; waiting for %s", self.name, job, exc, self.config.memory)
                    await self.wait_peer(self.config.memory)
                    continue
                except AwenError as exc:
                    log.error("%s: could not store %s as %s: %s", self.name, job, ended.state, exc)
                break
            await self._free(job)
        self._finished = JobFinished(
            job=job,
            state=ended.state,  # type: ignore[arg-type]
            reason=ended.reason,
            phase=ended.phase,
            duration_s=ended.duration_s,
            failures=list(ended.failures),
        )

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

    async def _free(self, job: str) -> None:
        try:
            await self.request(self.config.memory, Free(job=job))
        except AwenError:
            log.debug("%s: slots of %s were freed already", self.name, job)

    def _forget_device_state(self) -> None:
        """The device may not be as last set (safe state, reconnect, interlock): set everything next time."""
        self._configured = None
        self._volts = None
        self._version = None

    @subscribes("hal.")
    def _device_event(self, body: Any, env: Envelope) -> None:
        if getattr(body, "device", None) == self.config.device and env.type != "hal.temperature":
            self._forget_device_state()

    @property
    def _breaker_condition(self) -> str:
        return f"breaker:{self.config.device}"

    async def _tell_scheduler(self, request: Any) -> None:
        """Suspend or resume dispatch: new work fails fast at the queue, and the queue says why."""
        try:
            await self.request(self.config.scheduler, request)
        except AwenError as exc:
            log.error("%s: could not tell %s: %s", self.name, self.config.scheduler, exc)

    async def _safe(self) -> None:
        self._forget_device_state()
        try:
            with trio.fail_after(10):
                await self.request(self.config.hal, SafeState(device=self.config.device))
        except (AwenError, trio.TooSlowError) as exc:
            log.error("%s: could not put %s in its safe state: %s", self.name, self.config.device, exc)

    async def _run(self, job: str, plan: Plan, assignment: Assignment) -> _Ended:
        start_phase, run, fresh = assignment.start_phase, assignment.run, assignment.fresh
        model = await self._calibration(plan)
        if run.mode == "continuous":
            return await self._continuous(job, plan, model)
        slots = (
            [
                SlotSpec(name=register_slot(p.index, r.name), dtype="int64", shape=[2 ** len(r.columns)])
                for p in plan.phases
                for r in p.registers
            ]
            + [
                SlotSpec(name=register_slot(p.index, JOINT), dtype="int64", shape=[2 ** _joint_bits(p)])
                for p in plan.phases
                if len(p.registers) > 1 and _joint_bits(p) <= MAX_JOINT_BITS
            ]
            + [
                SlotSpec(name=register_slot(p.index, "powers"), dtype="float64", shape=[plan.modes])
                for p in plan.phases
                if p.readout == "powers"
            ]
        )
        journal = [
            SlotSpec(name="journal.phase", dtype="int64"),
            SlotSpec(name="journal.shots", dtype="int64"),
            SlotSpec(name="journal.cycle", dtype="int64"),
        ]
        if run.mode == "cyclic":
            slots.append(SlotSpec(name="cycle", dtype="int64"))
        allocate = Allocate(
            job=job,
            slots=slots,
            state=journal,
            device=self.config.device,
            plan=plan.id,
            calibration=plan.calibration,
            resume=True,
            mark_running=f"running on {self.name}",
            accepting=assignment.accepting,
        )
        first_write: Allocate | None = None
        if fresh:  # nothing to resume: the allocation rides with the first write, one message less
            first_write = allocate
            frame, phase_done, shots_done, cycle = 0, 0, 0, 0
        else:
            frame = (await self._ask(self.config.memory, allocate)).frame
            phase_done, shots_done, cycle = (await self._read_journal(job)) if frame > 0 else (0, 0, 0)

        def allocation() -> Allocate | None:
            """What the next write allocates first: the job's slots, if nothing has allocated them yet."""
            nonlocal first_write
            taken, first_write = first_write, None
            return taken

        first = max(start_phase, phase_done)
        if first != phase_done:
            shots_done = 0
        self.publish_soon(
            JobStarted(job=job, plan=plan.id, calibration=plan.calibration, start_phase=first, resumed=frame > 0)
        )
        total_shots = sum(p.shots for p in plan.phases)
        done_before = sum(p.shots for p in plan.phases[:first]) + shots_done
        rate = _Rate(done_before)
        committed = 0
        recorded = False

        async def commit(values: list[SlotValue], finish: Literal["completed"] | None) -> None:
            """One frame (results and journal) committed; with ``finish``, the job's end stored with it."""
            nonlocal frame, committed, recorded
            allocate = allocation()
            write = Write(
                job=job, frame=frame, writer=self.name, values=values, commit=True, finish=finish, allocate=allocate
            )
            try:
                await self._ask(self.config.memory, write)
            except RemoteError as exc:
                refused = exc.code in (ErrorCode.NOT_FOUND, ErrorCode.ILLEGAL_TRANSITION)
                if allocate is not None and allocate.accepting and refused:
                    raise _NotAccepted(exc.message) from None
                if allocate is None and exc.code == ErrorCode.NOT_FOUND:  # it restarted: the job's slots went with it
                    raise _PeerDown(self.config.memory, f"it no longer holds the job's slots ({exc.message})") from None
                raise
            frame += 1
            committed += 1
            self._committed += 1
            recorded = finish is not None

        def progress(phase: int, shots: int) -> None:
            """Shots done so far (not after the last frame: the job's end says it)."""
            done = rate.add(shots)
            if not recorded:
                eta = rate.eta(total_shots)
                self.publish(
                    Progress(
                        job=job,
                        phase=phase,
                        phases=len(plan.phases),
                        shots_done=done,
                        shots_total=total_shots,
                        eta_s=eta,
                    )
                )

        while True:
            for phase in plan.phases[first:]:
                self.phase = phase.index
                # A finite job's last frame stores its end too, and its last phase needs no checkpoint.
                final = run.mode == "finite" and phase.index == len(plan.phases) - 1
                started = time.monotonic()
                self._failing.clear()
                with trio.fail_after(phase.duration_s + self.config.phase_timeout_s):
                    configure_s, retries = await self._configure(plan.id, phase, model)
                    shots_s = store_s = 0.0
                    if phase.readout == "powers":
                        t0 = time.monotonic()
                        powers, tries = await self._retry(
                            lambda: self.request(
                                self.config.hal, ReadPowers(device=self.config.device, expect_version=self._version)
                            ),
                            f"phase {phase.index}: reading the photodiodes",
                            again=lambda phase=phase: self._configure(plan.id, phase, model),
                        )
                        retries += tries
                        t1 = time.monotonic()
                        readings = [
                            SlotValue(slot=register_slot(phase.index, "powers"), value=np.asarray(powers.watts, float)),
                            SlotValue(slot="journal.phase", value=phase.index + 1),
                            SlotValue(slot="journal.shots", value=0),
                            SlotValue(slot="journal.cycle", value=cycle),
                        ]
                        await commit(readings, "completed" if final else None)
                        shots_s, store_s = t1 - t0, time.monotonic() - t1
                        shots_done = phase.shots
                        progress(phase.index, phase.shots)
                    while shots_done < phase.shots:
                        if self._abort is not None:
                            await self._safe()
                            return _Ended("cancelled", self._abort, committed)
                        n = min(self.config.batch_shots, phase.shots - shots_done)
                        t0 = time.monotonic()
                        patterns, tries = await self._retry(
                            lambda n=n: self._shots(n),
                            f"phase {phase.index}: {n} shots",
                            again=lambda phase=phase: self._configure(plan.id, phase, model),
                        )
                        retries += tries
                        t1 = time.monotonic()
                        shots_done += n
                        last = shots_done >= phase.shots
                        journal_phase = phase.index + 1 if last else phase.index
                        frame_values = [
                            SlotValue(
                                slot=register_slot(phase.index, r.name), value=_histogram(patterns.patterns, r.columns)
                            )
                            for r in phase.registers
                        ]
                        if len(phase.registers) > 1 and _joint_bits(phase) <= MAX_JOINT_BITS:
                            columns = [c for r in phase.registers for c in r.columns]
                            joint = _histogram(patterns.patterns, columns)
                            frame_values.append(SlotValue(slot=register_slot(phase.index, JOINT), value=joint))
                        frame_values += [
                            SlotValue(slot="journal.phase", value=journal_phase),
                            SlotValue(slot="journal.shots", value=0 if last else shots_done),
                            SlotValue(slot="journal.cycle", value=cycle),
                        ]
                        if run.mode == "cyclic":
                            frame_values.append(SlotValue(slot="cycle", value=cycle))
                        await commit(frame_values, "completed" if final and last else None)
                        shots_s += t1 - t0
                        store_s += time.monotonic() - t1
                        progress(phase.index, n)
                measured = time.monotonic() - started
                self.publish_soon(
                    PhaseDone(
                        job=job,
                        phase=phase.index,
                        expected_s=phase.duration_s,
                        measured_s=measured,
                        times=PhaseTimes(configure_s=configure_s, shots_s=shots_s, store_s=store_s),
                        retries=retries,
                    )
                )
                shots_done = 0
                failures = sorted(self._failing)
                if recorded:
                    return _Ended(
                        "completed",
                        "",
                        committed,
                        True,
                        phase=phase.index,
                        duration_s=measured,
                        failures=tuple(failures),
                    )
                checkpoint = Checkpoint(
                    job=job, phase=phase.index, duration_s=measured, failures=failures, executor=self.name
                )
                proceed = await self._ask(self.config.scheduler, checkpoint)
                if proceed.action == "cancel":
                    await self._safe()
                    return _Ended("cancelled", proceed.reason, committed)
                more = phase.index + 1 < len(plan.phases) or (
                    run.mode == "cyclic" and (run.cycles is None or cycle + 1 < run.cycles)
                )
                if proceed.action == "preempt" and more:
                    log.info("%s: %s yields the device: %s", self.name, job, proceed.reason)
                    return _Ended("preempted", proceed.reason, committed)
            if run.mode != "cyclic":
                return _Ended("completed", "", committed)
            cycle += 1
            if run.cycles is not None and cycle >= run.cycles:
                return _Ended("completed", f"{cycle} cycles", committed)
            journal_values = [
                SlotValue(slot="journal.phase", value=0),
                SlotValue(slot="journal.shots", value=0),
                SlotValue(slot="journal.cycle", value=cycle),
            ]
            await commit(journal_values, None)
            first, shots_done = 0, 0
            with trio.move_on_after(run.period_s):
                await self._aborted.wait()
            if self._abort is not None:
                return _Ended("cancelled", self._abort, committed)

    async def _continuous(self, job: str, plan: Plan, model: CalibrationModel | None) -> _Ended:
        """Shot batches without end, as count rates: for live alignment at the bench. Nothing is stored."""
        self.publish(JobStarted(job=job, plan=plan.id, calibration=plan.calibration, start_phase=0, resumed=False))
        while True:
            for phase in plan.phases:
                self.phase = phase.index
                await self._configure(plan.id, phase, model)
                n = min(self.config.batch_shots, phase.shots)
                t0 = time.monotonic()
                shots, _ = await self._retry(
                    lambda n=n: self._shots(n),
                    f"phase {phase.index}: {n} shots",
                    again=lambda phase=phase: self._configure(plan.id, phase, model),
                )
                seconds = max(time.monotonic() - t0, 1e-9)
                clicks = (np.asarray(shots.patterns) > 0).sum(axis=0)
                self.publish(
                    Rates(
                        job=job,
                        phase=phase.index,
                        shots=n,
                        seconds=seconds,
                        rates=(clicks / seconds).tolist(),
                        registers={
                            r.name: (_histogram(shots.patterns, r.columns) / n).tolist() for r in phase.registers
                        },
                    )
                )
                if self._abort is not None:
                    await self._safe()
                    return _Ended("cancelled", self._abort, 0)
                checkpoint = Checkpoint(job=job, phase=phase.index, executor=self.name)
                proceed = await self._ask(self.config.scheduler, checkpoint)
                if proceed.action == "cancel":
                    await self._safe()
                    return _Ended("cancelled", proceed.reason, 0)
                if proceed.action == "preempt":
                    return _Ended("preempted", proceed.reason, 0)

    async def _read_journal(self, job: str) -> tuple[int, int, int]:
        names: list[str | int] = ["journal.phase", "journal.shots", "journal.cycle"]
        values = (await self._ask(self.config.memory, Read(job=job, slots=names))).values
        return int(values["journal.phase"]), int(values["journal.shots"]), int(values["journal.cycle"])

    async def _calibration(self, plan: Plan) -> CalibrationModel | None:
        if plan.calibration is None:
            if any(p.volts is None for p in plan.phases):
                raise _Failed(f"{self.config.device} has no calibration: calibrate it before running circuits")
            return None
        model = self._models.get(plan.calibration)  # a version never changes: read it once
        if model is None:
            try:
                record = await self.request(
                    self.config.memory, GetCalibration(device=self.config.device, version=plan.calibration)
                )
            except RemoteError as exc:
                raise _Failed(f"calibration version {plan.calibration} cannot be read: {exc.message}") from None
            model = self._models[plan.calibration] = CalibrationModel.from_fits(record.version, record.fits)
        return model

    def _volts_for(self, plan: str, phase: Phase, model: CalibrationModel | None) -> np.ndarray | None:
        """A phase's heater voltages: a plan and a calibration version never change, so each is worked out once."""
        if phase.volts is not None:
            return np.asarray(phase.volts, dtype=np.float64)
        if model is None:
            return None
        key = (plan, phase.index, model.version)
        volts = self._phase_volts.get(key)
        if volts is None:
            if len(self._phase_volts) >= VOLTS_CACHE:
                del self._phase_volts[next(iter(self._phase_volts))]  # the oldest
            volts = self._phase_volts[key] = model.volts_for(phase.mesh_phases)
        return volts

    async def _shots(self, n: int) -> Any:
        """A batch of shots, only on the device as this executor set it (else ``state-changed``)."""
        return await self.request(
            self.config.hal, RunShots(device=self.config.device, shots=n, expect_version=self._version)
        )

    async def _configure(self, plan: str, phase: Phase, model: CalibrationModel | None) -> tuple[float, int]:
        """Set the device up for a phase, sending only what differs from how this executor left it.

        Each change carries the state version the previous one made, so a
        change by anyone else in between is caught by the HAL (``state-changed``):
        then everything is sent again.
        """
        began = time.monotonic()
        retries = 0
        for attempt in range(self.config.retries + 1):
            try:
                retries += await self._configure_once(plan, phase, model)
                return time.monotonic() - began, retries
            except _StateChanged as exc:
                if attempt == self.config.retries:
                    raise _Failed(f"phase {phase.index}: {exc} after {attempt + 1} tries") from None
                log.warning("%s: %s; setting the device up again", self.name, exc)
                self._forget_device_state()
                retries += 1
        raise AssertionError("unreachable")

    async def _configure_once(self, plan: str, phase: Phase, model: CalibrationModel | None) -> int:
        retries = 0
        device = self.config.device
        volts = self._volts_for(plan, phase, model)
        if volts is not None and self._volts is not None and np.array_equal(volts, self._volts):
            volts = None  # the heaters are there already (the same configuration as the last phase or job)
        # The version chain is kept here, not in self._version, which a device event may clear meanwhile.
        version = self._version
        if volts is not None:
            self._volts = None
            heaters, tries = await self._change(
                SetHeaters(device=device, volts=volts, expect_version=version), "setting the heaters"
            )
            retries += tries
            version = heaters.version
            if heaters.mismatched:  # the device is not where it was set: tell the scheduler which modes, set it again
                layout = clements_layout(math.isqrt(len(volts)))
                self._failing.update(f"mode:{m}" for h in heaters.mismatched for m in layout.modes_of(h))
            else:
                self._volts = volts
        rules = {b.pattern: b.phases for b in phase.branches if b.phases}
        setup = (phase.inputs, phase.ff_modes, rules, phase.delay_lines)
        if setup != self._configured:  # a sweep changes only the heaters: the rest is sent once
            self._configured = None
            inputs = ConfigureInputs(device=device, inputs=phase.inputs, clear=True, expect_version=version)
            configured, tries = await self._change(inputs, "configuring the inputs")
            retries += tries
            program = Program(
                device=device,
                ff_modes=phase.ff_modes,
                rules=rules,
                delay_lines=phase.delay_lines,
                expect_version=configured.version,
            )
            configured, tries = await self._change(program, "programming feed-forward and delay lines")
            retries += tries
            version = configured.version
            self._configured = setup
        self._version = version
        if volts is not None:  # heaters changed: let them settle (unchanged ones settled long ago)
            await trio.sleep(phase.settle_s)
            await self._settled()
        return retries

    async def _change(self, request: Any, what: str) -> tuple[Any, int]:
        """A change of the device's state, retried on transient errors; `_StateChanged` if someone else changed it."""
        try:
            return await self._retry(lambda: self.request(self.config.hal, request), what, state_changed=True)
        except RemoteError as exc:
            raise _StateChanged(f"{what}: {exc.message}") from None

    async def _settled(self) -> None:
        """Until the device says its heaters have settled (the phases are where they were set)."""
        for _ in range(100):
            status = await self.request(self.config.hal, GetDeviceStatus(device=self.config.device))
            if status.settled:
                return
            await trio.sleep(0.001)
        log.warning("%s: %s did not report settled heaters; going on", self.name, self.config.device)

    async def _retry(self, call: Any, what: str, again: Any = None, *, state_changed: bool = False) -> tuple[Any, int]:
        """``await call()`` (a HAL request), again after transient errors with backoff and jitter; (result, retries).

        Before another try, ``await again()`` if given: shots are fired again
        only on a device set up again, in case the failure reset it. With
        ``state_changed``, a ``state-changed`` refusal is raised at once (the
        caller sets the device up again) rather than tried again as it was.
        The HAL lost altogether interrupts the job (`_PeerDown`): it resumes
        once the HAL is back, however long that takes.
        """
        delay = self.config.backoff_s
        for attempt in range(self.config.retries + 1):
            if attempt:
                self._forget_device_state()  # a link that failed may have been reopened: set it all again
                if again is not None:
                    await again()
            try:
                return await call(), attempt
            except RemoteError as exc:
                if state_changed and exc.code == ErrorCode.STATE_CHANGED:
                    raise
                if exc.code in GONE:
                    raise _PeerDown(self.config.hal, f"{what}: {exc.message}") from None
                if exc.code == ErrorCode.INTERLOCK:
                    raise _Failed(f"{what}: the interlock tripped ({exc.message})") from None
                if exc.code not in TRANSIENT or attempt == self.config.retries:
                    raise _Failed(f"{what}: {exc.message} [{exc.code}] after {attempt + 1} tries") from None
                log.warning("%s: %s failed (%s); retrying in %.2f s", self.name, what, exc, delay)
            except PeerLostError as exc:
                raise _PeerDown(self.config.hal, f"{what}: {exc}") from None
            except RequestTimeout as exc:
                if attempt == self.config.retries:
                    raise _Failed(f"{what}: {exc} after {attempt + 1} tries") from None
                log.warning("%s: %s: %s; retrying in %.2f s", self.name, what, exc, delay)
            await trio.sleep(delay * (0.5 + self._rng.random()))
            delay = min(delay * 2, self.config.backoff_max_s)
        raise AssertionError("unreachable")

    # --- requests ------------------------------------------------------------------------------

    @handles(Abort)
    def _abort_job(self, msg: Abort, env: Envelope) -> None:
        if self.job != msg.job:
            raise AwenError(f"{msg.job} is not running here (running: {self.job or 'nothing'})", field="job")
        self._abort = msg.reason
        self._aborted.set()

    @handles(GetExecutorStatus)
    def _status(self, msg: GetExecutorStatus, env: Envelope) -> ExecutorStatus:
        state: Literal["idle", "running", "breaker-open"] = "running" if self.job else "idle"
        if self.failures >= self.config.breaker_threshold:
            state = "breaker-open"
        return ExecutorStatus(
            state=state, job=self.job, phase=self.phase, breaker_failures=self.failures, jobs_run=self.jobs_run
        )


def _histogram(patterns: np.ndarray, columns: list[int]) -> np.ndarray:
    """How often each register value occurred: clicks in ``columns``, first column most significant."""
    clicks = (np.asarray(patterns)[:, columns] > 0).astype(np.int64)
    weights = 1 << np.arange(len(columns) - 1, -1, -1, dtype=np.int64)
    counts: np.ndarray = np.bincount(clicks @ weights, minlength=2 ** len(columns)).astype(np.int64)
    return counts


class _Rate:
    """Shots per second so far, for the time-left estimate."""

    def __init__(self, done: int) -> None:
        self.done = done
        self.began = time.monotonic()
        self.counted = 0

    def add(self, shots: int) -> int:
        self.done += shots
        self.counted += shots
        return self.done

    def eta(self, total: int) -> float:
        elapsed = time.monotonic() - self.began
        if not self.counted or elapsed <= 0:
            return math.inf
        return max(0.0, (total - self.done) / (self.counted / elapsed))
