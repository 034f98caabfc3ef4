"""The scheduler actor: accepts circuits, plans them ahead of their turn, hands them to the executor.

A submission is validated against the device the HAL describes, stored by the
memory actor, and only then acknowledged; a job whose plan is at hand may be
dispatched while it is stored (`SchedulerActor._accept`, decision 0009). A
planner task plans queued jobs in queue order, stores each plan, and marks the
job planned; the plan cache (`_plans`) means an identical circuit is never
compiled twice. Each job's life in the queue is one `JobPhase` (`_queue`).

The executor pulls work (``sched.next_job``) and reports every phase boundary
(``sched.checkpoint``), where the scheduler may take the device back for a
higher-priority job, or stop a cancelled one. An executor that asks for work
holds none: a job still marked running is offered to it again, from its next
phase. After a restart the queue is rebuilt from the store in the same order.
"""

from __future__ import annotations

import functools
import logging
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import trio

from protocol import AwenError, Backoff, Envelope, ErrorCode, NotFound, NotReady, convert_settings
from protocol.circuit import Circuit, CircuitError
from protocol.executor import Abort
from protocol.hal import (
    Describe,
    DeviceConnected,
    DeviceDisconnected,
    DeviceReconnected,
    InterlockReset,
    InterlockTripped,
)
from protocol.memory import (
    TERMINAL_STATES,
    CalibrationAdded,
    GetCalibration,
    GetJob,
    GetPlan,
    JobState,
    JobStored,
    LogEvent,
    Procedure,
    PutJob,
    QueryEvents,
    QueryJobs,
    SetJobState,
)
from protocol.photonica import DeviceDescription
from protocol.plan import Plan
from protocol.scheduler import (
    Accepted,
    Assignment,
    Cancel,
    Checkpoint,
    Drain,
    Drained,
    GetQueue,
    JobDispatched,
    JobFinished,
    JobPlanned,
    JobPreempted,
    JobRefused,
    NextJob,
    Pause,
    Proceed,
    QueueEntry,
    QueuePaused,
    QueueResumed,
    QueueState,
    ReportHealth,
    Resume,
    SetStrategy,
    Submit,
    SubmitProcedure,
    Suspend,
    Suspended,
    Unsuspend,
    Unsuspended,
    Validate,
    Validation,
)
from runtime import Actor, RemoteError, Runtime, current_job, current_trace, handles, subscribes, traced

from ._analyse import analyse
from ._compile import compile_circuit
from ._config import SchedulerConfig
from ._limits import Health
from ._plans import INLINE_OPS, PlanCache, PlanTerms
from ._queue import ACCEPTING_SEQ, JobEvent, JobPhase, JobQueue, QueuedJob
from ._strategy import Feedback
from ._validate import validate_plan

log = logging.getLogger("awen.scheduler")

DESCRIBE_BACKOFF = Backoff(first=0.05, longest=2.0)
"""How often the scheduler asks a HAL that cannot describe the device yet."""

PLAN_RETRY = Backoff(first=0.05, longest=2.0)
"""How often planning is tried again after it met a peer gone away (the store, restarting)."""

RETRIED = frozenset(
    {
        ErrorCode.PEER_LOST,
        ErrorCode.TIMEOUT,
        ErrorCode.ACTOR_STOPPED,
        ErrorCode.UNAVAILABLE,
        ErrorCode.STORE_UNAVAILABLE,
        ErrorCode.NOT_READY,
    }
)
"""Errors of planning that a restart of a peer explains: the job is planned again, not refused."""

TAKEN_OUT_KEPT = 4096
"""How many of the jobs taken out of the queue for good the scheduler remembers (`SchedulerActor._taken_out`)."""

PAUSE_RECORD = "sched.pause_state"
"""The event-log record of pausing and resuming the queue (written durably, read back on start)."""

ABORT_WAIT_S = 2.0
"""How long cancelling a running job waits for its executor's ``exec.abort`` answer (else: at the checkpoint)."""


DRAINING = "draining"
"""The suspender a drain sets (`SchedulerActor._drain`): nothing is dispatched while the lab stops."""


class Draining(AwenError):
    """The lab is stopping (``sched.drain``): nothing new is accepted."""

    code = ErrorCode.DRAINING


class QueueFull(AwenError):
    """The queue holds ``max_queue`` jobs already."""

    code = ErrorCode.QUEUE_FULL


def _new_job_id() -> str:
    return time.strftime("job-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


class SchedulerActor(Actor):
    """The queue and the planner. Args: `SchedulerConfig` keys."""

    KIND = "scheduler"

    def __init__(self, name: str, runtime: Runtime, **config: Any) -> None:
        super().__init__(name, runtime)
        self.config = convert_settings(config, SchedulerConfig, source=f"{name} configuration")
        self.strategy = self.config.strategy
        self.queue = JobQueue()
        self.description: DeviceDescription | None = None
        self.health = Health()
        self.feedback = Feedback()
        self.plans = PlanCache(self, self.config)
        self._ready = trio.Event()
        self._changed = trio.Event()
        self._planners = trio.CapacityLimiter(2)
        queued = self.metrics.gauge("awen_queue_jobs", "Jobs in the queue (the running one too).")
        self.metrics.on_collect(lambda: queued.set(len(self.queue.jobs)))
        self._submissions = self.metrics.counter("awen_submissions_total", "Circuits submitted.", ("outcome",))
        for outcome in ("accepted", "refused"):
            self._submissions.inc(0, outcome=outcome)
        self._planning: set[QueuedJob] = set()
        """Jobs a planner task is planning."""
        self._calibration_version: int | None = None
        self._calibration_known = False
        self._admitting: Counter[str] = Counter()
        """Submissions past `_admit` and not yet answered, by job id: places in the queue they have reserved."""
        self._draining = False
        """A drain began (`_drain`): submissions are refused, nothing more is dispatched, until the actor stops."""
        self._taken_out: dict[str, None] = {}
        """Jobs taken out of the queue for good (cancelled, refused, finished), the latest `TAKEN_OUT_KEPT`:
        a resent submission does not queue them again while the store's record of it is on its way."""

    # --- life cycle ---------------------------------------------------------------------------

    async def setup(self) -> None:
        self.start_soon(self._start)
        self.start_soon(self._deadline_loop)

    async def teardown(self) -> None:
        self.plans.close()

    async def _start(self) -> None:
        """Learn the device, rebuild the queue from the store, then plan."""
        await self._describe()
        await self._recover()
        self._ready.set()
        log.info(
            "%s: ready; %d jobs in the queue%s",
            self.name,
            len(self.queue.jobs),
            " (paused)" if self.queue.paused else "",
        )
        self._wake()
        await self._planner()

    async def _describe(self) -> None:
        """The device as the HAL describes it, asked until it answers (it may start after the scheduler)."""
        for delay in DESCRIBE_BACKOFF.delays():
            try:
                with trio.fail_after(5):
                    reply = await self.request(self.config.hal, Describe(device=self.config.device))
            except (AwenError, trio.TooSlowError) as exc:
                log.info("%s: waiting for %s to describe %s: %s", self.name, self.config.hal, self.config.device, exc)
                await trio.sleep(delay)
                continue
            if self.description is not None and reply.description != self.description:
                log.warning(
                    "%s: %s describes itself differently now; plans are made again", self.name, self.config.device
                )
                self._forget_plans()
            self.description = reply.description
            return

    async def _recover(self) -> None:
        memory = self.config.memory
        await self.wait_peer(memory)
        states: list[JobState] = ["queued", "planned", "running", "interrupted"]
        records = (await self.request(memory, QueryJobs(states=states, device=self.config.device, limit=100_000))).jobs
        for record in records:
            job = await self._read_back(record.job)
            if job is not None:
                self.queue.add(job)
                if job.phase is JobPhase.RUNNING:
                    self.queue.running = job.job
        pauses = (await self.request(memory, QueryEvents(prefix=PAUSE_RECORD, limit=100_000))).events
        if pauses and isinstance(pauses[-1].body, dict) and pauses[-1].body.get("paused"):
            self.queue.paused = True

    async def _read_back(self, job_id: str) -> QueuedJob | None:
        """A stored job as the queue holds it; None if it has ended, or runs on another device, or if the
        store cannot give it back (then it is failed)."""
        memory = self.config.memory
        plan: Plan | None = None
        try:
            record = (await self.request(memory, GetJob(job=job_id))).record
            if record.state in TERMINAL_STATES or record.device != self.config.device:
                return None
            if record.procedure is not None:
                plan = (await self.request(memory, GetPlan(plan=record.procedure.plan))).body
        except RemoteError as exc:
            if exc.code in RETRIED:
                raise
            await self._fail_unreadable(job_id, str(exc))
            return None
        if record.circuit is None and plan is None:
            await self._fail_unreadable(job_id, "the store holds neither its circuit nor its procedure")
            return None
        return QueuedJob(
            job=record.job,
            seq=record.seq,
            circuit=record.circuit,
            priority=record.priority,
            deadline=record.deadline,
            phase=JobPhase.read_back(record.state, record.frames),
            plan=plan,
            next_phase=0 if record.last_phase is None else record.last_phase + 1,
        )

    async def _fail_unreadable(self, job: str, why: str) -> None:
        """A stored job that cannot be read back cannot run: failed, with the reason."""
        log.error("%s: stored job %s cannot be read back (%s); failing it", self.name, job, why)
        await self._set_state(job, "failed", f"its stored circuit or plan cannot be read: {why}")

    def _ready_now(self) -> DeviceDescription:
        """The device's description once the queue is rebuilt; `NotReady` (ask again shortly) until then."""
        if not self._ready.is_set() or self.description is None:
            raise NotReady(
                f"{self.name} is starting: it has no description of {self.config.device} from "
                f"{self.config.hal} yet, or has not read the queue back from {self.config.memory}"
            )
        return self.description

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _set_state(self, job: str, state: JobState, reason: str = "", **extra: Any) -> None:
        await self.request(self.config.memory, SetJobState(job=job, state=state, reason=reason, **extra))

    # --- submission ---------------------------------------------------------------------------

    @handles(Submit)
    async def _submit(self, msg: Submit, env: Envelope) -> Accepted:
        job_id = msg.job or _new_job_id()
        try:
            with self._admission(job_id):
                accepted = await self._submit_circuit(msg, env, job_id)
        except Exception:
            self._submissions.inc(outcome="refused")
            raise
        self._submissions.inc(outcome="accepted")
        return accepted

    async def _submit_circuit(self, msg: Submit, env: Envelope, job_id: str) -> Accepted:
        device = self._ready_now()
        circuit = msg.circuit
        # A plan at hand was compiled from this very circuit for this device as it is: it passed. Then
        # the job is stored planned, in the same transaction.
        plan = self._plan_at_hand(circuit, device)
        current_job.set(job_id)  # this handler's own task: what it logs names the job
        cached = True
        if plan is None:
            try:
                plan, cached = await self._plan_now(circuit, device, job_id)
                if plan is None:
                    await self._check(circuit, device)
            except CircuitError:
                # A resubmission of a job accepted before (the device or the limits have changed since) is
                # answered with that job, not refused: the store compares the submission with the one under
                # its key (the same: that job, created=False; another: exists). The key is looked up only
                # here, when the circuit would be refused: a circuit that passes costs no round trip more
                # (clients send a key with every submission), and mem.put_job answers by the key anyway.
                if msg.key is None or not await self._key_stored(msg.key):
                    raise
        queued = QueuedJob(
            job=job_id,
            seq=ACCEPTING_SEQ,
            circuit=circuit,
            priority=circuit.priority,
            deadline=circuit.deadline,
            phase=JobPhase.QUEUED if plan is None else JobPhase.ACCEPTING,
            plan=plan,
            trace=current_trace.get(),
        )
        put = PutJob(
            job=job_id,
            circuit=circuit,
            shots=circuit.shots,
            priority=circuit.priority,
            device=self.config.device,
            deadline=circuit.deadline,
            submitter=msg.submitter or env.sender,
            plan=plan.id if plan is not None else None,
            calibration=plan.calibration if plan is not None else None,
            key=msg.key,
            tags=msg.tags,
            with_plan=None if plan is None or plan.id in self.plans.stored else self.plans.put(plan, job_id),
        )
        stored = await self._accept(queued, put, cached=cached)
        if plan is not None:
            self.plans.stored.add(plan.id)  # with the job, if it was not before
        if not stored.created and stored.job not in self.queue.jobs:
            await self._adopt(stored.job)
        # stored.job: the job asked for, or the one stored before under the same key (then not queued again)
        position = self.queue.position(stored.job) if stored.job in self.queue.jobs else 0
        if stored.created:
            how = f"planned ({plan.id})" if plan is not None else "to be planned"
            log.info("%s: accepted %s from %s: seq %d, %s", self.name, job_id, put.submitter, stored.seq, how)
        else:
            log.debug("%s: %s was submitted before: answered with %s", self.name, job_id, stored.job)
        return Accepted(job=stored.job, seq=stored.seq, position=position, created=stored.created)

    @contextmanager
    def _admission(self, job: str) -> Iterator[None]:
        """`_admit` a circuit's submission and reserve its place in the queue until it is answered.

        The check and the reservation are one step (no await between), so submissions awaiting their
        planning or their store round trip at once cannot together push the queue past ``max_queue``.
        """
        reserve = self._admit(job, procedure=False)
        if reserve:
            self._admitting[job] += 1
        try:
            yield
        finally:
            if reserve:
                self._admitting[job] -= 1
                if self._admitting[job] <= 0:
                    del self._admitting[job]

    def _admit(self, job: str | None, *, procedure: bool) -> bool:
        """Refuse a submission while the lab drains (`Draining`), or past ``max_queue`` (`QueueFull`).

        A job the queue holds already (a resent submission) is answered as before; a calibration
        procedure is not held to ``max_queue`` (the lab needs it to run anything). True if the
        submission needs a place in the queue (`_admission` reserves it).
        """
        # A submission that passed this before a drain began may be accepted after: it was received before.
        if self._draining:
            raise Draining("the lab is stopping: submit again once it is back")
        if procedure or (job is not None and job in self.queue.jobs):
            return False
        # a submission queued already by the fast path (`_accept`) is still reserved: it counts once
        held = len(self.queue.jobs) + sum(1 for j in self._admitting if j not in self.queue.jobs)
        if held >= self.config.max_queue:
            raise QueueFull(
                f"the queue is full: it holds or is accepting {held} jobs and its limit is "
                f"max_queue = {self.config.max_queue}; submit again once some have run"
            )
        return True

    async def _adopt(self, job_id: str) -> None:
        """Queue a job that a resent submission found stored, and that the queue does not hold.

        Its first acceptance committed, and its answer was lost with the
        store's process (the scheduler heard "peer lost" and did not queue
        it): the client sends it again, by key or job id, and hears
        ``created=False``. An ended job, or one this scheduler took out of the
        queue (cancelled, refused, finished), stays out.
        """
        if job_id in self._taken_out:
            return
        job = await self._read_back(job_id)
        if job is None or job_id in self.queue.jobs or job_id in self._taken_out:
            return  # ended; or queued, or taken out, while it was read
        log.warning("%s: %s was stored, its acceptance unanswered: queued now", self.name, job_id)
        self.queue.add(job)
        if job.phase is JobPhase.RUNNING and self.queue.running is None:
            self.queue.running = job.job
        self._wake()

    async def _key_stored(self, key: str) -> bool:
        """Whether a job is stored under the submission key ``key``."""
        return bool((await self.request(self.config.memory, QueryJobs(key=key, limit=1))).jobs)

    async def _check(self, circuit: Circuit, device: DeviceDescription) -> None:
        """`CircuitError` with every problem of a circuit on the device, if it has any."""
        if len(circuit.ops) <= INLINE_OPS:  # a small circuit: analysed at once, cheaper than a thread hop
            analysis = analyse(circuit, device, self.config.limits, self.health)
        else:
            analysis = await trio.to_thread.run_sync(analyse, circuit, device, self.config.limits, self.health)
        if analysis.problems:
            raise CircuitError(analysis.problems)

    async def _accept(self, job: QueuedJob, put: PutJob, *, cached: bool = True) -> JobStored:
        """Store a new job and queue it; a job with its plan at hand is queued, and may run, while it is stored.

        Decision 0009, "a job with its plan at hand is dispatched while its
        acceptance commits": such a job (`JobPhase.ACCEPTING`) needs nothing
        more before it runs, so it joins the queue as ``mem.put_job`` is sent,
        and an executor waiting for work gets it at once, marked
        `Assignment.accepting`. The acceptance and the executor's first write
        reach the memory actor over different connections; the memory actor
        holds an ``accepting`` allocation until the job is stored. Until its
        acceptance commits the job comes after every stored job, is not shown
        in the queue (`_get_queue`), nor taken as running on an executor's
        word (`_running`); the client hears "accepted" only once it is
        durable. If the acceptance fails, or finds the same job stored and
        ended (a resubmission), or finds its submission key stored with
        another job (that job is the answer), the job is taken back
        (`_withdraw`): a key never queues a second job. A job
        that needs planning is queued once it is stored: its planning takes
        longer than the commit.
        """
        early = job.phase.accepting and job.job not in self.queue.jobs
        if early:
            assert job.plan is not None
            self.queue.add(job)
            self.plans.hits += cached
            self.publish_soon(JobPlanned(job=job.job, plan=job.plan.id, metrics=job.plan.metrics, cached=cached))
            self._wake()
        try:
            stored = await self.request(self.config.memory, put)
        except BaseException:
            if early:
                self._withdraw(job)
            raise
        if early and not stored.created:
            # the same job was stored before, or its key names another job: it does not run (again)
            self._withdraw(job)
        elif stored.created and (early or job.job not in self.queue.jobs):
            job.accepted(stored.seq)
            if not early:
                self.queue.add(job)
            self._wake()
        return stored

    def _withdraw(self, job: QueuedJob) -> None:
        """Take back a job queued while its acceptance committed, which then failed or found it stored and ended.

        If it was dispatched already, the executor's first write is refused
        (the memory actor waited for the acceptance) and the executor drops it.
        """
        if self.queue.jobs.get(job.job) is job:
            self.queue.remove(job.job)
            self._wake()

    @handles(SubmitProcedure)
    async def _submit_procedure(self, msg: SubmitProcedure, env: Envelope) -> Accepted:
        self._admit(msg.job, procedure=True)
        device = self._ready_now()
        validate_plan(msg.plan, device)
        plan = msg.plan
        stored = await self.request(
            self.config.memory,
            PutJob(
                job=msg.job,
                procedure=Procedure(description=msg.description or msg.job, plan=plan.id),
                shots=sum(p.shots for p in plan.phases),
                priority=msg.priority,
                device=self.config.device,
                submitter=env.sender,
            ),
        )
        if stored.created:
            await self.plans.store(plan, msg.job)
            await self._set_state(
                msg.job, "planned", f"procedure {plan.id}", plan=plan.id, calibration=plan.calibration
            )
            self.queue.add(
                QueuedJob(
                    job=msg.job,
                    seq=stored.seq,
                    circuit=None,
                    priority=msg.priority,
                    deadline=None,
                    phase=JobPhase.PLANNED,
                    plan=plan,
                    trace=current_trace.get(),
                )
            )
            log.info("%s: accepted procedure %s from %s: seq %d", self.name, msg.job, env.sender, stored.seq)
            self._wake()
        position = self.queue.position(msg.job) if msg.job in self.queue.jobs else 0
        return Accepted(job=msg.job, seq=stored.seq, position=position, created=stored.created)

    @handles(Validate)
    async def _validate(self, msg: Validate, env: Envelope) -> Validation:
        device = self._ready_now()
        try:
            plan = await trio.to_thread.run_sync(
                functools.partial(compile_circuit, msg.circuit, device, limits=self.config.limits, health=self.health)
            )
        except CircuitError as exc:
            return Validation(ok=False, problems=exc.problems)
        return Validation(ok=True, problems=[], metrics=plan.metrics)

    # --- planning -----------------------------------------------------------------------------

    async def _planner(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                changed = self._changed
                candidates = [  # the running job too: after a restart it may have no plan in memory yet
                    j
                    for j in self.queue.ordered()
                    if j.plan is None and j not in self._planning and j.circuit is not None
                ]
                planning = sum(1 for j in self.queue.jobs.values() if j in self._planning)
                for job in candidates[: max(0, self.config.plan_ahead - planning)]:
                    self._planning.add(job)
                    nursery.start_soon(self._plan_job, job)
                await changed.wait()

    async def _plan_job(self, job: QueuedJob) -> None:
        """Plan a queued job; a job that cannot be planned is refused (failed, saying why).

        Planning that meets a peer gone away (the store restarting after a
        crash: its answer lost, or not ready yet) is tried again, with
        backoff, while the job is queued: a crash of the store fails no job.
        """
        assert job.circuit is not None
        current_trace.set(job.trace)  # a planner's task of its own: it plans for the job's submission
        current_job.set(job.job)
        try:
            for delay in PLAN_RETRY.delays():
                try:
                    async with self._planners:
                        plan, cached = await self._plan(job.circuit)
                    await self._accept_plan(job, plan, cached)
                    return
                except CircuitError as exc:
                    await self._refuse(job, f"it cannot be planned any more: {exc.message}")
                    return
                except AwenError as exc:
                    if exc.code not in RETRIED:
                        log.error("%s: planning %s failed: %s", self.name, job.job, exc)
                        await self._refuse(job, f"planning failed: {exc.message}")
                        return
                    log.warning("%s: planning %s: %s; trying again in %.2f s", self.name, job.job, exc, delay)
                await trio.sleep(delay)
                if self.queue.jobs.get(job.job) is not job:
                    return  # cancelled (or ended) meanwhile
        finally:
            self._planning.discard(job)
            self._wake()

    def _plan_at_hand(self, circuit: Circuit, device: DeviceDescription) -> Plan | None:
        """The circuit's plan if it was made and stored before and may run: a submission then needs no planning."""
        if not self._calibration_known:
            return None
        plan = self.plans.at_hand(circuit, self._terms(device, self._calibration_version))
        if plan is None or self._refusal(plan) is not None:
            return None
        return plan

    async def _plan(self, circuit: Circuit) -> tuple[Plan, bool]:
        """The circuit's plan for the device as it is now, and whether it was made before (`PlanCache.get`)."""
        device = self.description
        assert device is not None
        calibration = await self._calibration()
        return await self.plans.get(circuit, self._terms(device, calibration))

    async def _plan_now(self, circuit: Circuit, device: DeviceDescription, job: str) -> tuple[Plan | None, bool]:
        """A small circuit's plan made and stored at its submission, so that it is dispatched at once (decision 0009).

        Compiling a circuit of at most `INLINE_OPS` ops takes less than the planner's round trips
        (look the plan up, store it, store the job planned), so it is made here, and the job is
        stored planned with it (`PutJob.with_plan`), as one whose plan was at hand; and whether it
        was made before. None: planned
        later by the planner (a larger circuit, the calibration not known yet, a plan the strategy refuses).

        Raises:
            CircuitError: every problem of the circuit on the device.
        """
        if len(circuit.ops) > INLINE_OPS or not self._calibration_known:
            return None, False
        made = self.plans.make_now(circuit, self._terms(device, self._calibration_version))
        if made is None:
            return None, False
        plan, made_before = made
        if self._refusal(plan) is not None:
            return None, False  # the planner refuses it, saying why
        return plan, made_before

    def _terms(self, device: DeviceDescription, calibration: int | None) -> PlanTerms:
        return PlanTerms(device, calibration, self.health, self.strategy, self.feedback)

    async def _calibration(self) -> int | None:
        """The device's latest calibration version: asked once, then kept up to date by ``mem.calibration_added``."""
        if self._calibration_known:
            return self._calibration_version
        try:
            reply = await self.request(self.config.memory, GetCalibration(device=self.config.device))
        except RemoteError as exc:
            if exc.code != ErrorCode.NOT_FOUND:
                raise
            version = None
        else:
            version = reply.version
        if not self._calibration_known:
            self._calibration_version, self._calibration_known = version, True
        return self._calibration_version

    @subscribes("mem.calibration_added")
    def _calibration_added(self, body: CalibrationAdded, env: Envelope) -> None:
        if body.device != self.config.device:
            return
        self._calibration_version = max(body.version, self._calibration_version or 0)
        self._calibration_known = True
        # Plans made ahead under an older version are made again, ahead too (`_assign` checks once more).
        for job in self.queue.jobs.values():
            stale = job.plan is not None and job.plan.calibration != self._calibration_version
            if stale and job.circuit is not None and job.job != self.queue.running and job not in self._planning:
                job.plan = None
        self._wake()

    def _refusal(self, plan: Plan) -> str | None:
        """Why a plan may not run under the strategy's limits, if it may not."""
        longest = max((p.duration_s for p in plan.phases), default=0.0)
        if longest > self.strategy.max_phase_s:
            return (
                f"its longest phase would take {longest:.3g} s; max_phase_s is "
                f"{self.strategy.max_phase_s:g} s (split its shots into several jobs)"
            )
        if plan.metrics.total_duration_s > self.strategy.max_job_s:
            return f"it would take {plan.metrics.total_duration_s:.3g} s; max_job_s is {self.strategy.max_job_s:g} s"
        return None

    async def _accept_plan(self, job: QueuedJob, plan: Plan, cached: bool) -> None:
        why = self._refusal(plan)
        if why is not None:
            await self._refuse(job, why)
            return
        if plan.id not in self.plans.stored:
            await self.plans.store(plan, job.job)
        if job.job not in self.queue.jobs:
            return  # cancelled while it was being planned
        if job.can(JobEvent.PLANNED):  # the store does not say planned yet
            await self._mark_planned(job.job, plan)
            job.move(JobEvent.PLANNED)
        job.plan = plan
        log.debug("%s: %s planned: %s%s", self.name, job.job, plan.id, " (made before)" if cached else "")
        self.publish(JobPlanned(job=job.job, plan=plan.id, metrics=plan.metrics, cached=cached))

    async def _mark_planned(self, job: str, plan: Plan) -> None:
        """Store that ``job`` is planned, with ``plan``; a try before may have, its answer lost with the store."""
        try:
            await self._set_state(job, "planned", f"plan {plan.id}", plan=plan.id, calibration=plan.calibration)
        except RemoteError as exc:
            if exc.code != ErrorCode.ILLEGAL_TRANSITION:
                raise
            if (await self.request(self.config.memory, GetJob(job=job))).record.state != "planned":
                raise
            log.info("%s: %s was stored planned already (the answer was lost)", self.name, job)

    def _take_out(self, job: str) -> QueuedJob | None:
        """Remove a job from the queue for good (it is cancelled, refused or has ended); the job, if queued."""
        self._taken_out[job] = None
        while len(self._taken_out) > TAKEN_OUT_KEPT:
            del self._taken_out[next(iter(self._taken_out))]
        return self.queue.remove(job)

    async def _refuse(self, job: QueuedJob, reason: str) -> None:
        if self._take_out(job.job) is None:
            return
        log.warning("%s: job %s failed: %s", self.name, job.job, reason)
        try:
            await self._set_state(job.job, "failed", reason)
        except RemoteError as exc:
            log.error("%s: could not record that %s failed: %s", self.name, job.job, exc)
        self.publish(JobRefused(job=job.job, reason=reason))
        self._wake()

    async def _deadline_loop(self) -> None:
        await self._ready.wait()
        while True:
            await trio.sleep(self.config.deadline_check_s)
            for job, why in self.queue.hopeless(time.time()):
                await self._refuse(job, why)

    # --- the queue ----------------------------------------------------------------------------

    @handles(Cancel)
    async def _cancel(self, msg: Cancel, env: Envelope) -> None:
        self._ready_now()
        job = self.queue.jobs.get(msg.job)
        if job is None:
            record = (await self.request(self.config.memory, GetJob(job=msg.job))).record
            if record.state in TERMINAL_STATES:
                return  # it has ended: cancelling it again is harmless (a retried cancel)
            raise AwenError(f"job {msg.job} is {record.state}, not in the queue; nothing to cancel", field="job")
        if msg.job == self.queue.running:
            job.cancel_reason = msg.reason  # the executor learns it at the next phase boundary, at the latest
            if job.executor is not None:
                await self._abort_running(job.executor, msg.job, msg.reason)
            return
        self._take_out(msg.job)
        await self._set_state(msg.job, "cancelled", msg.reason)
        self._wake()

    async def _abort_running(self, executor: str, job: str, reason: str) -> None:
        """Stop a running job within its phase (``exec.abort``), not only at its next boundary.

        Best effort: an executor that has just finished the job, or cannot be reached, leaves the
        cancellation to the checkpoint, which holds it already.
        """
        try:
            with trio.move_on_after(ABORT_WAIT_S):
                await self.request(executor, Abort(job=job, reason=reason))
        except AwenError as exc:
            log.info("%s: %s could not abort %s now (%s); it stops at its next phase", self.name, executor, job, exc)

    @handles(Pause)
    async def _pause(self, msg: Pause, env: Envelope) -> None:
        reason = msg.reason or f"paused by {env.sender}"
        await self._record_pause(True, reason)
        self.queue.paused = True
        self.publish(QueuePaused(reason=reason))

    @handles(Resume)
    async def _resume(self, msg: Resume, env: Envelope) -> None:
        await self._record_pause(False, f"resumed by {env.sender}")
        self.queue.paused = False
        self.publish(QueueResumed())
        self._wake()

    async def _record_pause(self, paused: bool, reason: str) -> None:
        """In the store before the reply: a restarted scheduler finds the queue as it was left."""
        self._ready_now()
        await self.request(self.config.memory, LogEvent(type=PAUSE_RECORD, body={"paused": paused, "reason": reason}))

    @handles(Drain)
    async def _drain(self, msg: Drain, env: Envelope) -> Drained:
        """The lab stops: refuse submissions, dispatch nothing, and wait for the running job to leave the device.

        The running job is preempted at its next checkpoint (the ``draining`` suspender, `_checkpoint`): its
        frames are committed, it is stored planned and resumes at the next start; a job in its last phase
        finishes. Answered once no job runs, or after ``timeout_s`` (then stopping the lab interrupts it).
        """
        if not self._draining:
            self._draining = True
            log.warning(
                "%s: draining (asked by %s): submissions refused, nothing more dispatched", self.name, env.sender
            )
            self._suspend(DRAINING, "the lab is stopping")
        job = self.queue.running
        deadline = trio.current_time() + msg.timeout_s
        while self.queue.running is not None and trio.current_time() < deadline:
            changed = self._changed
            with trio.move_on_at(deadline):
                await changed.wait()
        still = self.queue.running
        if still is not None:
            log.warning("%s: %s reached no phase boundary within %g s", self.name, still, msg.timeout_s)
        return Drained(job=job, timed_out=still is not None, queued=len(self.queue.jobs))

    @handles(GetQueue)
    async def _get_queue(self, msg: GetQueue, env: Envelope) -> QueueState:
        self._ready_now()  # before recovery the queue would look empty
        return QueueState(
            paused=self.queue.paused,
            suspended=dict(self.queue.suspended),
            running=self.queue.running,
            jobs=[
                QueueEntry(
                    job=j.job,
                    seq=j.seq,
                    priority=j.priority,
                    state=j.phase.stored,
                    planned=j.plan is not None,
                    next_phase=j.next_phase,
                    phases=len(j.plan.phases) if j.plan else 0,
                    expected_s=j.remaining_s(),
                    deadline=j.deadline,
                )
                for j in self.queue.ordered()
                if not j.phase.accepting  # not accepted yet (for a few milliseconds)
            ],
            plans_compiled=self.plans.compiled,
            plan_cache_hits=self.plans.hits,
        )

    @handles(SetStrategy)
    def _set_strategy(self, msg: SetStrategy, env: Envelope) -> None:
        self.strategy = msg.strategy
        log.info("%s: strategy now %s (from %s)", self.name, msgspec.json.encode(msg.strategy).decode(), env.sender)

    @handles(ReportHealth)
    def _report_health(self, msg: ReportHealth, env: Envelope) -> None:
        if msg.device != self.config.device:
            return
        self.health = Health(
            modes=frozenset(msg.modes),
            detectors=frozenset(msg.detectors),
            delay_lines=frozenset(msg.delay_lines),
        )
        self._forget_plans()  # plans made for the old health are made again
        self._wake()

    def _forget_plans(self) -> None:
        """The device changed: every waiting job's plan is made again when its turn comes.

        Not the running job's, nor one being planned now (its planner finishes it), nor a
        procedure's: its plan is what was submitted, there is no circuit to plan again.
        """
        for job in self.queue.jobs.values():
            if job.job != self.queue.running and job not in self._planning and job.circuit is not None:
                job.plan = None

    # --- suspenders ---------------------------------------------------------------------------

    def _suspend(self, condition: str, reason: str) -> None:
        if condition not in self.queue.suspended:
            log.warning("%s: dispatch suspended: %s", self.name, reason)
            self.publish(Suspended(condition=condition, reason=reason))
        self.queue.suspended[condition] = reason

    def _unsuspend(self, condition: str) -> None:
        if self.queue.suspended.pop(condition, None) is not None:
            log.info("%s: %s cleared", self.name, condition)
            self.publish(Unsuspended(condition=condition))
            self._wake()

    @handles(Suspend)
    def _suspend_request(self, msg: Suspend, env: Envelope) -> None:
        self._suspend(msg.condition, msg.reason)

    @handles(Unsuspend)
    def _unsuspend_request(self, msg: Unsuspend, env: Envelope) -> None:
        if msg.condition == DRAINING and self._draining:
            raise AwenError("the lab is stopping: a drain is not undone (start the lab again)", field="condition")
        self._unsuspend(msg.condition)

    @subscribes("hal.")
    def _hal_event(self, body: Any, env: Envelope) -> None:
        if getattr(body, "device", None) != self.config.device:
            return
        device = self.config.device
        if isinstance(body, InterlockTripped):
            self._suspend(f"interlock:{device}", f"{device}: interlock tripped ({body.reason})")
        elif isinstance(body, InterlockReset):
            self._unsuspend(f"interlock:{device}")
        elif isinstance(body, DeviceDisconnected):
            self._suspend(f"link:{device}", f"{device} disconnected ({body.reason})")
        elif isinstance(body, DeviceConnected | DeviceReconnected):
            self._unsuspend(f"link:{device}")
            if self._ready.is_set():
                self.start_soon(self._describe)

    # --- dispatch -----------------------------------------------------------------------------

    @handles(NextJob)
    async def _next_job(self, msg: NextJob, env: Envelope) -> Assignment:
        self._ready_now()  # before the job that finished is taken off a queue not read back yet
        if msg.finished is not None:
            try:
                self._finished(msg.finished)
            except NotFound as exc:
                log.warning("%s: %s reports %s finished: %s", self.name, msg.executor, msg.finished.job, exc)
        deadline = trio.current_time() + msg.wait_s
        while True:
            running = self.queue.jobs.get(self.queue.running) if self.queue.running else None
            if running is not None and running.plan is not None and running.executor in (None, msg.executor):
                # An executor that asks for work holds none: what it was running is offered to it again.
                # (Claimed by nobody: the scheduler restarted while it ran; the first to ask takes it.)
                log.warning(
                    "%s: %s asks for work while %s is marked running; offering it again from phase %d",
                    self.name,
                    msg.executor,
                    running.job,
                    running.next_phase,
                )
                running.executor = msg.executor
                return await self._assign(running, msg.executor, fresh=False)  # it ran
            job = self.queue.next_ready()
            if job is not None:
                assert job.plan is not None
                fresh = job.phase.fresh
                # Claimed before any await: another executor asking meanwhile waits for the device. The
                # executor records it running, with its allocation (mem.allocate mark_running).
                self.queue.claim(job, msg.executor)
                return await self._assign(job, msg.executor, fresh=fresh)
            changed = self._changed
            with trio.move_on_at(deadline):
                await changed.wait()
            if trio.current_time() >= deadline:
                return Assignment()

    async def _assign(self, job: QueuedJob, executor: str, *, fresh: bool) -> Assignment:
        """Hand a job to an executor, under the trace of its submission: the executor runs it under it too."""
        with traced(job.trace, job.job):
            return await self._hand_out(job, executor, fresh=fresh)

    async def _hand_out(self, job: QueuedJob, executor: str, *, fresh: bool) -> Assignment:
        # Planned ahead, perhaps under a calibration that has since been superseded: the decision which
        # calibration a job runs under is made here, as it is handed out, not when it was planned.
        await self._replan_if_recalibrated(job)
        assert job.plan is not None
        log.debug("%s: dispatched %s to %s from phase %d", self.name, job.job, executor, job.next_phase)
        self.publish_soon(JobDispatched(job=job.job, executor=executor, start_phase=job.next_phase))
        run = job.circuit.run if job.circuit is not None else Assignment().run
        return Assignment(
            job=job.job,
            plan=job.plan,
            start_phase=job.next_phase,
            run=run,
            fresh=fresh,
            accepting=job.phase.accepting,
            trace=job.trace,
        )

    async def _replan_if_recalibrated(self, job: QueuedJob) -> None:
        """A job about to run under a superseded calibration is planned again with the latest.

        A job that resumes (after preemption or a crash) keeps its phases: the
        new plan has the same phases (same circuit, same device), so the
        executor's journal still says where to resume; results from here on
        name the new calibration version.
        """
        if job.circuit is None or job.plan is None:
            return
        calibration = await self._calibration()
        if calibration is None or calibration == job.plan.calibration:
            return
        try:
            plan, _ = await self._plan(job.circuit)
        except AwenError as exc:  # it was planned once; what it was planned with still describes how it runs
            log.warning(
                "%s: %s cannot be planned under calibration %s (%s); it runs under %s",
                self.name,
                job.job,
                calibration,
                exc,
                job.plan.calibration,
            )
            return
        if job.next_phase > 0 and len(plan.phases) != len(job.plan.phases):
            log.warning(
                "%s: %s: the new plan has other phases; keeping calibration %s",
                self.name,
                job.job,
                job.plan.calibration,
            )
            return
        if plan.id not in self.plans.stored:
            await self.plans.store(plan, job.job)
        log.info(
            "%s: %s runs from phase %d under calibration %s (planned under %s)",
            self.name,
            job.job,
            job.next_phase,
            plan.calibration,
            job.plan.calibration,
        )
        job.plan = plan

    def _running(self, job: str, executor: str | None = None) -> QueuedJob:
        """The running job, which ``executor`` (if named) reports on.

        A scheduler that restarted while the job ran read it back from the
        store as running (claimed by nobody), or as planned if the executor's
        running mark had not been written yet: the executor's report re-
        establishes the claim, unless another job runs or another executor
        holds this one.
        """
        found = self.queue.jobs.get(job)
        if found is None:
            raise NotFound(f"job {job} is not running", field="job")
        if self.queue.running == job:
            if executor is not None and found.executor in (None, executor):
                found.executor = executor
                return found
            if executor is None or found.executor is None:
                return found
            raise NotFound(f"job {job} runs on {found.executor}, not {executor}", field="executor")
        if executor is not None and self.queue.running is None and found.plan is not None and not found.phase.accepting:
            log.warning("%s: %s reports running %s: taken as running again", self.name, executor, job)
            self.queue.claim(found, executor)
            return found
        raise NotFound(f"job {job} is not running", field="job")

    @handles(Checkpoint)
    async def _checkpoint(self, msg: Checkpoint, env: Envelope) -> Proceed:
        self._ready_now()
        job = self._running(msg.job, msg.executor)
        if job.plan is None:  # read back after a restart; its plan is being made (from the store) again
            raise NotReady(f"{self.name} is reading back the plan of {msg.job}; ask again shortly")
        if 0 <= msg.phase < len(job.plan.phases):
            failed = list(msg.failures)
            self.feedback.record(job.plan.phases[msg.phase], ok=msg.ok, duration_s=msg.duration_s, failed=failed)
        if msg.ok:
            job.next_phase = msg.phase + 1
            repeating = job.circuit is not None and job.circuit.run.mode != "finite"
            if repeating and job.next_phase >= len(job.plan.phases):
                job.next_phase = 0  # a cyclic or continuous job goes round again
        if job.cancel_reason is not None:
            return Proceed(action="cancel", reason=job.cancel_reason)
        if job.next_phase >= len(job.plan.phases):
            return Proceed(action="continue", reason="that was the last phase")
        why = None
        if self.queue.paused:
            why = "the queue is paused"
        elif self.queue.suspended:
            why = "dispatch is suspended: " + "; ".join(self.queue.suspended.values())
        elif self.strategy.preempt and (other := self.queue.preemptor()) is not None:
            why = f"preempted by {other.job} (priority {other.priority} > {job.priority})"
        if why is None:
            return Proceed(action="continue")
        await self._set_state(job.job, "planned", f"{why}; resumes at phase {job.next_phase}", expect=["running"])
        self.queue.release(job)
        self.publish(JobPreempted(job=job.job, by=why, next_phase=job.next_phase))
        self._wake()
        return Proceed(action="preempt", reason=why)

    @handles(JobFinished)
    def _job_finished(self, msg: JobFinished, env: Envelope) -> None:
        self._ready_now()
        self._finished(msg)

    def _finished(self, msg: JobFinished) -> None:
        job = self._running(msg.job)  # the executor has stored how it ended
        if job.plan is not None and msg.phase is not None and 0 <= msg.phase < len(job.plan.phases):
            ok = msg.state == "completed"
            self.feedback.record(job.plan.phases[msg.phase], ok=ok, duration_s=msg.duration_s, failed=msg.failures)
        self._take_out(msg.job)
        self._wake()
