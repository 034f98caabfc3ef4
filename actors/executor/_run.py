"""One job on the device, from its assignment to its end: the executor's work, step by step.

A `JobRun` goes through these steps (its methods, in the order they run):

1. `allocate`: the job's slots in the memory actor (`protocol.results`: one
   histogram per register per phase, the journal in the state buffer), with
   ``resume`` (a job that ran before finds its committed frames) and the mark
   that it is running. A fresh job (nothing of it ran) skips the round trip:
   its allocation rides with its first write (decision 0009).
2. `read_journal`: where a resumed job stands (phases done, shots done).
3. `run_phase` for each phase from there: the device set up
   (`HalDevice.configure`), then `fire_batch` (or `read_powers`) until the
   phase's shots are done, each batch one frame, `commit_frame` storing its
   results and the journal together before the next batch is fired.
4. `checkpoint` at each phase boundary: the scheduler says continue, preempt
   or cancel. A finite job's last phase has none: its last frame stores the
   job's end (``finish``) in the same transaction.
5. `finish`: the end stored (unless the last frame did), the slots freed,
   and what the scheduler is told.

`run` wraps the steps in the recovery protocol of decision 0012: when an
actor the job needs dies (`PeerDown`), the device is made safe, the executor
waits for that actor, and the job starts again at step 1 as a restarted
executor would start it: allocated with ``resume``, the journal read, the
device set up again, on at the first uncommitted batch. A batch that was
fired but not committed is fired again; a committed one never is. The job
timeout counts running, not waiting; ten interruptions in a row without a
committed frame fail the job.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Literal, NamedTuple

import msgspec
import numpy as np
import trio

from protocol import AwenError, Backoff, ErrorCode
from protocol.calibration_model import CalibrationModel
from protocol.executor import EndState, JobStarted, PhaseDone, PhaseTimes, Progress, Rates
from protocol.memory import Allocate, Free, Read, SetJobState, SlotValue, Write
from protocol.plan import Phase
from protocol.results import (
    CYCLE_SLOT,
    JOURNAL_SLOTS,
    Journal,
    click_totals,
    powers_slot,
    register_histogram,
    result_slots,
)
from protocol.results import shot_values as phase_shot_values
from protocol.scheduler import Assignment, Checkpoint, JobFinished
from runtime import Actor, Metrics, PeerLostError, RemoteError, RequestTimeout

from ._config import ExecutorConfig
from ._device import HalDevice
from ._faults import Failed, NotAccepted, PeerDown, ask
from ._volts import PhaseVolts

log = logging.getLogger("awen.executor")

MAX_RESUMES_WITHOUT_PROGRESS = 10
"""Interruptions in a row after which no frame was committed: then the job fails rather than loop."""


class Ended(NamedTuple):
    """How a run of a job ended; ``recorded``: its last frame stored the end already (``mem.write`` finish)."""

    state: EndState
    reason: str
    frames: int
    recorded: bool = False
    phase: int | None = None
    duration_s: float = 0.0
    failures: tuple[str, ...] = ()


class RunMetrics:
    """The executor's metrics (decision 0015 §2), in its actor's registry (registering them again returns them)."""

    def __init__(self, metrics: Metrics) -> None:
        self.shots = metrics.counter("awen_shots_total", "Shots fired (finite and continuous jobs).")
        buckets = Metrics.DURATION_BUCKETS
        self.job = metrics.histogram("awen_job_duration_seconds", "How long a job ran, to its end.", buckets)
        self.phase = metrics.histogram("awen_phase_duration_seconds", "How long a phase ran (measured).", buckets)


@dataclasses.dataclass
class _PhaseClock:
    """Where a phase's time went, for ``exec.phase_done``."""

    configure_s: float = 0.0
    shots_s: float = 0.0
    store_s: float = 0.0
    retries: int = 0


class JobRun:
    """One job, run on the device until it ends, is preempted or cancelled, through any interruptions.

    Attributes:
        job, plan, assignment: What the scheduler handed out (``assignment.fresh``
            turns false once the job has been interrupted: it may have a journal).
        phase: The phase under way (None before the first).
        frame: The memory actor's open frame for this job: the next write's.
        journal: Where the job stands as the store has it: phases done, shots
            done in the phase under way, cycles done; read back on resume,
            advanced with each committed frame.
        shots_done: Shots done in the phase under way.
        frames: Frames this go at the job committed (since the last allocation).
        recorded: The last frame stored the job's end.
        abort_reason: Set by ``exec.abort``: the job stops within its phase.
    """

    def __init__(
        self, actor: Actor, config: ExecutorConfig, device: HalDevice, volts: PhaseVolts, assignment: Assignment
    ) -> None:
        assert assignment.job is not None
        assert assignment.plan is not None
        self.actor = actor
        self.config = config
        self.device = device
        self.volts = volts
        self.job = assignment.job
        self.plan = assignment.plan
        self.assignment = assignment
        self.phase: int | None = None
        self.frame = 0
        self.journal = Journal()
        self.shots_done = 0
        self.frames = 0
        self.recorded = False
        self.abort_reason: str | None = None
        self._aborted = trio.Event()
        self._allocation: Allocate | None = None
        """The allocation the next write carries (a fresh job's first write), if any."""
        self._shots_total = sum(p.shots for p in self.plan.phases)
        self._rate = _Rate(0)
        self._resume = Backoff(first=config.backoff_s, longest=config.backoff_max_s, jitter=0)
        self.metrics = RunMetrics(actor.metrics)

    def abort(self, reason: str) -> None:
        """Stop the job within its phase (``exec.abort``): the device goes safe, the job ends cancelled."""
        self.abort_reason = reason
        self._aborted.set()

    # --- through interruptions ------------------------------------------------------------------

    async def run(self) -> Ended:
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
            try:
                with trio.fail_after(self.config.job_timeout_s):
                    return await self._go()
            except PeerDown as down:
                without_progress = 0 if self.frames else without_progress + 1
                if without_progress > MAX_RESUMES_WITHOUT_PROGRESS:
                    raise Failed(f"interrupted {without_progress} times in a row without progress ({down})") from None
                log.warning(
                    "%s: %s is interrupted (%s); it resumes from its journal once %s is back",
                    self.actor.name,
                    self.job,
                    down,
                    down.peer,
                )
                self.device.forget()
                if down.peer != self.config.hal:  # with the HAL gone, the device's watchdog makes it safe
                    with trio.move_on_after(2):
                        await self.device.safe()
                await self.actor.wait_peer(down.peer)
                await trio.sleep(self._resume.delay(without_progress))
                self.assignment = msgspec.structs.replace(self.assignment, fresh=False)

    async def _go(self) -> Ended:
        """One go at the job, begun as a restarted executor would begin it."""
        self.frames = 0
        model = await self.volts.model(self.plan)
        if self.assignment.run.mode == "continuous":
            return await self.run_continuous(model)
        await self.allocate()
        first = self._start()
        while True:
            for phase in self.plan.phases[first:]:
                ended = await self.run_phase(phase, model)
                if ended is not None:
                    return ended
            ended = await self._next_cycle()
            if ended is not None:
                return ended
            first = 0

    # --- the steps --------------------------------------------------------------------------------

    async def allocate(self) -> None:
        """Claim the job's slots and mark it running; unless the job is fresh, find where it stands."""
        allocate = Allocate(
            job=self.job,
            slots=result_slots(self.plan, cyclic=self.assignment.run.mode == "cyclic"),
            state=Journal.slots(),
            device=self.config.device,
            plan=self.plan.id,
            calibration=self.plan.calibration,
            resume=True,
            mark_running=f"running on {self.actor.name}",
            accepting=self.assignment.accepting,
        )
        self.recorded = False
        self.journal = Journal()
        if self.assignment.fresh:  # nothing to resume: the allocation rides with the first write, one message less
            self._allocation, self.frame = allocate, 0
            return
        self._allocation = None
        self.frame = (await ask(self.actor, self.config.memory, allocate)).frame
        if self.frame > 0:
            await self.read_journal()

    async def read_journal(self) -> None:
        """Where the job stands, as its last committed frame recorded it."""
        names: list[str | int] = list(JOURNAL_SLOTS)
        values = (await ask(self.actor, self.config.memory, Read(job=self.job, slots=names))).values
        self.journal = Journal.read(values)

    def _start(self) -> int:
        """The first phase to run (the journal's, unless the scheduler starts the job later); announce it."""
        first = max(self.assignment.start_phase, self.journal.phase)
        self.shots_done = self.journal.shots if first == self.journal.phase else 0
        self.actor.publish_soon(
            JobStarted(
                job=self.job,
                plan=self.plan.id,
                calibration=self.plan.calibration,
                start_phase=first,
                resumed=self.frame > 0,
            )
        )
        self._rate = _Rate(sum(p.shots for p in self.plan.phases[:first]) + self.shots_done)
        return first

    async def run_phase(self, phase: Phase, model: CalibrationModel | None) -> Ended | None:
        """Set the device up for a phase, take its readings frame by frame, ask the scheduler how to go on.

        Returns how the job ended, or None to go on with the next phase.
        """
        self.phase = phase.index
        # A finite job's last frame stores its end too, and its last phase needs no checkpoint.
        final = self.assignment.run.mode == "finite" and phase.index == len(self.plan.phases) - 1
        started = time.monotonic()
        self.device.failing.clear()
        clock = _PhaseClock()
        with trio.fail_after(phase.duration_s + self.config.phase_timeout_s):
            clock.configure_s, clock.retries = await self.device.configure(self.plan.id, phase, model)
            if phase.readout == "powers":
                await self.read_powers(phase, model, clock, final=final)
            while self.shots_done < phase.shots:
                if self.abort_reason is not None:
                    await self.device.safe()
                    return Ended("cancelled", self.abort_reason, self.frames)
                await self.fire_batch(phase, model, clock, final=final)
        measured = time.monotonic() - started
        self.metrics.phase.observe(measured)
        self.actor.publish_soon(
            PhaseDone(
                job=self.job,
                phase=phase.index,
                expected_s=phase.duration_s,
                measured_s=measured,
                times=PhaseTimes(configure_s=clock.configure_s, shots_s=clock.shots_s, store_s=clock.store_s),
                retries=clock.retries,
            )
        )
        self.shots_done = 0
        failures = sorted(self.device.failing)
        if self.recorded:
            return Ended(
                "completed", "", self.frames, True, phase=phase.index, duration_s=measured, failures=tuple(failures)
            )
        return await self.checkpoint(phase, measured, failures)

    async def read_powers(
        self, phase: Phase, model: CalibrationModel | None, clock: _PhaseClock, *, final: bool
    ) -> None:
        """A photodiode phase: one reading, one frame."""
        t0 = time.monotonic()
        powers, tries = await self.device.retry(
            self.device.read_powers,
            f"phase {phase.index}: reading the photodiodes",
            again=lambda: self.device.configure(self.plan.id, phase, model),
        )
        clock.retries += tries
        t1 = time.monotonic()
        journal = Journal(phase=phase.index + 1, shots=0, cycle=self.journal.cycle)
        readings = [SlotValue(slot=powers_slot(phase.index), value=np.asarray(powers.watts, float)), *journal.values()]
        await self.commit_frame(readings, "completed" if final else None)
        clock.shots_s, clock.store_s = t1 - t0, time.monotonic() - t1
        self.journal, self.shots_done = journal, phase.shots
        self._progress(phase.index, phase.shots)

    async def fire_batch(
        self, phase: Phase, model: CalibrationModel | None, clock: _PhaseClock, *, final: bool
    ) -> None:
        """One batch of the phase's shots, committed as one frame with the journal after it."""
        n = min(self.config.batch_shots, phase.shots - self.shots_done)
        t0 = time.monotonic()
        shots, tries = await self.device.retry(
            lambda: self.device.shots(n),
            f"phase {phase.index}: {n} shots",
            again=lambda: self.device.configure(self.plan.id, phase, model),
        )
        clock.retries += tries
        t1 = time.monotonic()
        done = self.shots_done + n
        last = done >= phase.shots
        cycle = self.journal.cycle
        journal = Journal(phase=phase.index + 1, shots=0, cycle=cycle) if last else Journal(phase.index, done, cycle)
        values = phase_shot_values(phase, shots.patterns, shots.counts) + journal.values()
        if self.assignment.run.mode == "cyclic":
            values.append(SlotValue(slot=CYCLE_SLOT, value=cycle))
        await self.commit_frame(values, "completed" if final and last else None)
        self.journal, self.shots_done = journal, done
        clock.shots_s += t1 - t0
        clock.store_s += time.monotonic() - t1
        self._progress(phase.index, n)

    async def commit_frame(self, values: list[SlotValue], finish: Literal["completed"] | None) -> None:
        """One frame (results and journal) committed; with ``finish``, the job's end stored with it."""
        allocate, self._allocation = self._allocation, None
        write = Write(
            job=self.job,
            frame=self.frame,
            writer=self.actor.name,
            values=values,
            commit=True,
            finish=finish,
            allocate=allocate,
        )
        try:
            await ask(self.actor, self.config.memory, write)
        except RemoteError as exc:
            refused = exc.code in (ErrorCode.NOT_FOUND, ErrorCode.ILLEGAL_TRANSITION)
            if allocate is not None and allocate.accepting and refused:
                raise NotAccepted(exc.message) from None
            if allocate is None and exc.code == ErrorCode.NOT_FOUND:  # it restarted: the job's slots went with it
                raise PeerDown(self.config.memory, f"it no longer holds the job's slots ({exc.message})") from None
            raise
        self.frame += 1
        self.frames += 1
        self.recorded = finish is not None

    async def checkpoint(self, phase: Phase, measured: float, failures: list[str]) -> Ended | None:
        """At a phase boundary, the scheduler says whether the job goes on, yields the device or is cancelled."""
        checkpoint = Checkpoint(
            job=self.job, phase=phase.index, duration_s=measured, failures=failures, executor=self.actor.name
        )
        proceed = await ask(self.actor, self.config.scheduler, checkpoint)
        if proceed.action == "cancel":
            await self.device.safe()
            return Ended("cancelled", proceed.reason, self.frames)
        run = self.assignment.run
        more = phase.index + 1 < len(self.plan.phases) or (
            run.mode == "cyclic" and (run.cycles is None or self.journal.cycle + 1 < run.cycles)
        )
        if proceed.action == "preempt" and more:
            log.info("%s: %s yields the device: %s", self.actor.name, self.job, proceed.reason)
            return Ended("preempted", proceed.reason, self.frames)
        return None

    async def _next_cycle(self) -> Ended | None:
        """After the last phase: a finite job is done; a cyclic one waits its period and runs the plan again."""
        run = self.assignment.run
        if run.mode != "cyclic":
            return Ended("completed", "", self.frames)
        cycle = self.journal.cycle + 1
        if run.cycles is not None and cycle >= run.cycles:
            return Ended("completed", f"{cycle} cycles", self.frames)
        journal = Journal(phase=0, shots=0, cycle=cycle)
        await self.commit_frame(journal.values(), None)
        self.journal, self.shots_done = journal, 0
        with trio.move_on_after(run.period_s):
            await self._aborted.wait()
        if self.abort_reason is not None:
            return Ended("cancelled", self.abort_reason, self.frames)
        return None

    def _progress(self, phase: int, shots: int) -> None:
        """Shots done so far (not after the last frame: the job's end says it)."""
        done = self._rate.add(shots)
        self.metrics.shots.inc(shots)
        if not self.recorded:
            self.actor.publish(
                Progress(
                    job=self.job,
                    phase=phase,
                    phases=len(self.plan.phases),
                    shots_done=done,
                    shots_total=self._shots_total,
                    eta_s=self._rate.eta(self._shots_total),
                )
            )

    # --- a continuous job -------------------------------------------------------------------------

    async def run_continuous(self, model: CalibrationModel | None) -> Ended:
        """Shot batches without end, as count rates: for live alignment at the bench. Nothing is stored."""
        plan = self.plan
        self.actor.publish(
            JobStarted(job=self.job, plan=plan.id, calibration=plan.calibration, start_phase=0, resumed=False)
        )
        while True:
            for phase in plan.phases:
                self.phase = phase.index
                await self.device.configure(plan.id, phase, model)
                await self._publish_rates(phase, model)
                if self.abort_reason is not None:
                    await self.device.safe()
                    return Ended("cancelled", self.abort_reason, 0)
                checkpoint = Checkpoint(job=self.job, phase=phase.index, executor=self.actor.name)
                proceed = await ask(self.actor, self.config.scheduler, checkpoint)
                if proceed.action == "cancel":
                    await self.device.safe()
                    return Ended("cancelled", proceed.reason, 0)
                if proceed.action == "preempt":
                    return Ended("preempted", proceed.reason, 0)

    async def _publish_rates(self, phase: Phase, model: CalibrationModel | None) -> None:
        """One batch of a continuous job's phase, published as count rates (``exec.rates``)."""
        n = min(self.config.batch_shots, phase.shots)
        t0 = time.monotonic()
        shots, _ = await self.device.retry(
            lambda: self.device.shots(n),
            f"phase {phase.index}: {n} shots",
            again=lambda: self.device.configure(self.plan.id, phase, model),
        )
        seconds = max(time.monotonic() - t0, 1e-9)
        self.metrics.shots.inc(n)
        clicks = click_totals(shots.patterns, shots.counts)
        self.actor.publish(
            Rates(
                job=self.job,
                phase=phase.index,
                shots=n,
                seconds=seconds,
                rates=(clicks / seconds).tolist(),
                registers={
                    r.name: (register_histogram(shots.patterns, r.columns, shots.counts) / n).tolist()
                    for r in phase.registers
                },
            )
        )

    # --- the end ----------------------------------------------------------------------------------

    async def finish(self, ended: Ended) -> JobFinished:
        """Store how the job ended (unless its last frame did) and free its slots; what the scheduler hears.

        The scheduler is told with the executor's next request for work
        (`NextJob` ``finished``), or at once if none follows.
        """
        assert ended.state != "preempted", "a preempted job is not finished: its slots are freed, and it resumes"
        if not ended.recorded:
            end = SetJobState(job=self.job, state=ended.state, reason=ended.reason)
            for _ in range(MAX_RESUMES_WITHOUT_PROGRESS):
                try:
                    await self.actor.request(self.config.memory, end)
                except (PeerLostError, RequestTimeout) as exc:  # the end must be stored: wait for the store
                    log.warning(
                        "%s: storing how %s ended: %s; waiting for %s",
                        self.actor.name,
                        self.job,
                        exc,
                        self.config.memory,
                    )
                    await self.actor.wait_peer(self.config.memory)
                    continue
                except AwenError as exc:
                    log.error("%s: could not store %s as %s: %s", self.actor.name, self.job, ended.state, exc)
                break
            await self.free()
        return JobFinished(
            job=self.job,
            state=ended.state,
            reason=ended.reason,
            phase=ended.phase,
            duration_s=ended.duration_s,
            failures=list(ended.failures),
        )

    async def free(self) -> None:
        """Free the job's slots (its committed results and journal stay in the store)."""
        try:
            await self.actor.request(self.config.memory, Free(job=self.job))
        except AwenError:
            log.debug("%s: slots of %s were freed already", self.actor.name, self.job)


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
