"""The memory actor: result slots for running jobs, and the store on the message bus.

Slots are answered inline from memory (`SlotTable`). Everything durable goes
through one writer task that gathers the requests waiting at that moment into
one transaction (group commit); each is answered only after that transaction
has committed. A small transaction commits on the event loop's own thread (a
worker-thread hop would cost more than the commit itself), a big one in a
worker thread. Writes nobody waits for (logged events, the running state an
executor's allocation records) ride along with the next transaction, or are
written on their own at most ``write_behind_s`` after they arrived. Reads run
on a second connection in another thread, beside the writer; short ones (a
job's journal) at once.

Configured in the system file::

    [[actor]]
    name = "memory"
    factory = "actors.memory:MemoryActor"
    config = { data_dir = "/var/lib/awen" }
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import numpy as np
import trio

from protocol import AwenError, Envelope, IllegalTransition, NotFound, convert_settings, pack, paths
from protocol.memory import (
    JOB_TRANSITIONS,
    TERMINAL_STATES,
    Allocate,
    Allocated,
    Calibration,
    CalibrationAdded,
    Calibrations,
    CalibrationStored,
    Clear,
    CommitFrame,
    DeviceResults,
    EventLog,
    Export,
    Exported,
    FinalState,
    FrameCommitted,
    Free,
    GetCalibration,
    GetJob,
    GetPlan,
    GetStoreInfo,
    Job,
    Jobs,
    JobState,
    JobStateChanged,
    JobStateSet,
    JobStored,
    ListCalibrations,
    LogEvent,
    PlanStored,
    PutCalibration,
    PutJob,
    PutPlan,
    QueryDeviceResults,
    QueryEvents,
    QueryJobs,
    QueryResults,
    Read,
    Results,
    ResultsComplete,
    SetJobState,
    StoredPlan,
    StoreInfo,
    Values,
    Write,
    Written,
)
from runtime import Actor, Runtime, handles

from . import _store as ops
from ._slots import SlotTable
from ._store import Store, WriteOp

log = logging.getLogger("awen.memory")

T = TypeVar("T")

MiB = 2**20

INLINE_BYTES = 256 * 1024
"""Transactions writing less than this commit on the event loop's thread; bigger ones in a worker thread."""


def default_data_dir() -> str:
    """``$AWEN_DATA_DIR``, else ``$XDG_DATA_HOME/awen``, else ``~/.local/share/awen``: `protocol.paths`' rule."""
    return str(paths.default_data_dir(os.environ))


NEW_JOBS_KEPT = 10_000
"""Jobs stored and not moved since whose state the memory actor keeps (their allocation reads nothing)."""


class MemoryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The memory actor's ``config`` table.

    Attributes:
        data_dir: Where ``store.sqlite3`` and ``exports/`` live.
        synchronous: ``full``: every acknowledged write survives power loss;
            ``normal``: it survives a crash of awen, not necessarily of the machine.
        max_job_bytes: Most bytes one job's slots and state buffer may take.
        max_total_bytes: Most bytes all running jobs' slots may take together.
        max_store_bytes: Refuse writes past this store size (none: the disk is the limit).
        batch: Most write requests gathered into one transaction.
        log_events: Event type prefixes written to the store's event log. Job
            state changes are always logged (with the transitions); by default
            what changes the lab's state is logged too (devices, actors, peers,
            calibrations, the queue's pauses, suspensions, preemptions and
            refusals), but not the per-job play-by-play (planned, dispatched,
            started, phase done, progress), which the transitions and frames
            already date, and which would cost the memory actor a message
            each.
        write_behind_s: Longest a write nobody waits for (a logged event) waits for a transaction to ride along with.
        checkpoint_s: How often the WAL is copied into the database file, beside the writer (never inside a commit).
        accept_wait_s: Longest an allocation marked ``accepting`` waits for its job's ``mem.put_job``
            (dispatched while its acceptance commits) before it is refused with ``not-found``.
    """

    data_dir: str = msgspec.field(default_factory=default_data_dir)
    synchronous: Literal["full", "normal"] = "full"
    max_job_bytes: Annotated[int, msgspec.Meta(gt=0)] = 256 * MiB
    max_total_bytes: Annotated[int, msgspec.Meta(gt=0)] = 1024 * MiB
    max_store_bytes: Annotated[int, msgspec.Meta(gt=0)] | None = None
    batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 512
    log_events: list[str] = msgspec.field(
        default_factory=lambda: [
            "hal.",
            "actor.",
            "peer.",
            "cal.",
            "sched.job_preempted",
            "sched.job_refused",
            "sched.queue_",
            "sched.suspended",
            "sched.unsuspended",
        ]
    )
    write_behind_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.1
    checkpoint_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 1.0
    accept_wait_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 5.0

    @property
    def store_path(self) -> Path:
        return Path(self.data_dir).expanduser() / "store.sqlite3"


@dataclass(slots=True)
class _Op:
    run: WriteOp[Any] | None
    """None: nothing to write but the logged events waiting."""
    done: trio.Event | None = field(default_factory=trio.Event)
    """None: nobody waits for it."""
    then: Callable[[Any], object] | None = None
    """Called with the result once committed, in the order of the writes (before any waiter hears)."""
    result: Any = None


class MemoryActor(Actor):
    """Allocates slots, enforces one writer per slot per frame, and keeps the store.

    Args:
        config: `MemoryConfig` keys (``data_dir``, ``synchronous``, limits, ...).
    """

    KIND = "memory"

    def __init__(self, name: str, runtime: Runtime, **config: Any) -> None:
        super().__init__(name, runtime)
        self.config = convert_settings(config, MemoryConfig, source=f"{name} configuration")
        self.slots = SlotTable(max_job_bytes=self.config.max_job_bytes, max_total_bytes=self.config.max_total_bytes)
        self.store: Store | None = None
        self.transactions = 0
        self._ops_in, self._ops_out = trio.open_memory_channel[_Op](math.inf)
        self._events: list[tuple[float, str, str, bytes]] = []
        self._behind: list[_Op] = []
        self._flush_due = False
        self._storing: dict[str, trio.Event] = {}
        """Jobs whose mem.put_job is committing (or awaited by an accepting allocation): set once it has."""
        self._commits: dict[str, trio.Event] = {}
        """Jobs with a frame being committed: set once it has. An allocation of the job waits for it,
        so that it opens the frame after it, with the state buffer it stored."""
        self._new: dict[str, JobState] = {}
        """Jobs this actor stored that have not moved since, by state: their first allocation reads nothing."""
        self._writer = trio.CapacityLimiter(1)
        self._reader = trio.CapacityLimiter(1)
        self._checkpointer = trio.CapacityLimiter(1)
        self._jobs_total = self.metrics.counter("awen_jobs_total", "Jobs moved into each state, at commit.", ("state",))
        self._store_bytes = self.metrics.gauge("awen_store_bytes", "Bytes of the store's files (database and WAL).")
        for prefix in self.config.log_events:
            self.subscribe(prefix, self._log_event)

    async def setup(self) -> None:
        path = self.config.store_path
        self.store = await trio.to_thread.run_sync(
            partial(Store, path, synchronous=self.config.synchronous, max_bytes=self.config.max_store_bytes)
        )
        await self.start(self._write_loop)
        self.start_soon(self._checkpoint_loop)
        self._store_bytes.set(self._file_bytes())
        for job, reason in self.store.interrupted:
            self._jobs_total.inc(state="interrupted")
            self.publish(JobStateChanged(job=job, state="interrupted", previous="running", reason=reason))

    async def teardown(self) -> None:
        if self.store is None:
            return
        behind = self._take_behind()
        if behind:  # the writer's last transaction has ended: its task was cancelled and waited
            try:
                self.store.run_batch([op.run for op in behind if op.run is not None])
            except AwenError as exc:
                log.error("%s: %d writes nobody waited for were lost on stopping: %s", self.name, len(behind), exc)
        self.store.close()

    # --- the writer -------------------------------------------------------------------------

    async def _write_loop(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self.store is not None
        store = self.store
        task_status.started()
        async for first in self._ops_out:
            batch = [first]
            while len(batch) < self.config.batch:
                try:
                    batch.append(self._ops_out.receive_nowait())
                except trio.WouldBlock:
                    break
            # First what was written behind: it happened before the requests that follow it.
            writes = self._take_behind() + [op for op in batch if op.run is not None]
            if not writes:
                continue
            runs = [op.run for op in writes if op.run is not None]
            try:
                if sum(run.nbytes for run in runs) < INLINE_BYTES:
                    results = store.run_batch(runs)
                else:
                    results = await trio.to_thread.run_sync(store.run_batch, runs, limiter=self._writer)
                self.transactions += 1
            except Exception as exc:  # noqa: BLE001 - StoreUnavailable, or a bug: every waiter hears of it
                results = [exc] * len(runs)
            for op, result in zip(writes, results, strict=True):  # in the order they were written
                op.result = result
                if isinstance(result, Exception):
                    if op.done is None:
                        log.error("%s: a write nobody waited for failed: %s", self.name, result)
                elif op.then is not None:
                    op.then(result)
                if op.done is not None:
                    op.done.set()

    async def _checkpoint_loop(self) -> None:
        """Copy the WAL into the database file now and then, in a worker thread: commits stay short."""
        assert self.store is not None
        store = self.store
        done = self.transactions
        while True:
            await trio.sleep(self.config.checkpoint_s)
            if self.transactions == done:
                continue
            done = self.transactions
            try:
                await trio.to_thread.run_sync(store.checkpoint, limiter=self._checkpointer)
            except AwenError as exc:
                log.warning("%s: %s", self.name, exc)
            self._store_bytes.set(self._file_bytes())

    async def _write(self, run: WriteOp[T], then: Callable[[T], object] | None = None) -> T:
        """Run a write operation in the next transaction; returns once it has committed."""
        op = _Op(run, then=then)
        self._ops_in.send_nowait(op)
        assert op.done is not None
        await op.done.wait()
        if isinstance(op.result, Exception):
            raise op.result
        return op.result  # type: ignore[no-any-return]

    async def _read(self, run: Callable[[sqlite3.Connection], T]) -> T:
        assert self.store is not None
        return await trio.to_thread.run_sync(self.store.read, run, limiter=self._reader)

    def _write_behind(self, op: _Op) -> None:
        """Write with the next transaction, or within ``write_behind_s``: for what nobody waits for."""
        self._behind.append(op)
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self._flush_due and self.running:
            self._flush_due = True
            self.start_soon(self._flush_later)

    async def _flush_later(self) -> None:
        """What is still waiting after ``write_behind_s`` gets a transaction of its own."""
        await trio.sleep(self.config.write_behind_s)
        self._flush_due = False
        self._ops_in.send_nowait(_Op(None, done=None))

    def _take_behind(self) -> list[_Op]:
        behind, self._behind = self._behind, []
        if self._events:
            behind.insert(0, _Op(ops.log_events(self._events), done=None))
            self._events = []
        return behind

    def _log_event(self, body: Any, env: Envelope) -> None:
        self._events.append((env.ts, env.type, env.sender, pack(body)))
        self._flush_soon()

    # --- slots ------------------------------------------------------------------------------

    @handles(Allocate)
    def _allocate(self, msg: Allocate, env: Envelope) -> Allocated | Awaitable[Allocated]:
        return self._allocate_request(msg)

    def _allocate_request(self, msg: Allocate) -> Allocated | Awaitable[Allocated]:
        if msg.job in self._commits:
            return self._allocate_after_commit(msg)
        try:
            return self._allocate_now(msg)
        except NotFound:
            if not msg.accepting:
                raise
            return self._allocate_once_stored(msg)

    async def _allocate_after_commit(self, msg: Allocate) -> Allocated:
        """A job allocated again (a restarted executor) while a frame of it commits: after that frame."""
        while (committing := self._commits.get(msg.job)) is not None:
            await committing.wait()
        allocated = self._allocate_request(msg)
        return allocated if isinstance(allocated, Allocated) else await allocated

    async def _allocate_once_stored(self, msg: Allocate) -> Allocated:
        """Allocate for a job whose acceptance (its mem.put_job) is still on its way.

        The scheduler may dispatch a job while its acceptance commits, and the
        executor's first write can overtake it: they come over different
        connections. Waits up to ``accept_wait_s`` for it to commit.
        """
        stored = self._storing.setdefault(msg.job, trio.Event())
        with trio.move_on_after(self.config.accept_wait_s):
            await stored.wait()
        if self._storing.get(msg.job) is stored and not stored.is_set():
            del self._storing[msg.job]
        try:
            return self._allocate_now(msg)
        except NotFound:
            raise NotFound(
                f"no job {msg.job!r} in the store: its acceptance (mem.put_job) failed, or did not come within "
                f"accept_wait_s = {self.config.accept_wait_s:g} s",
                field="job",
            ) from None

    def _allocate_now(self, msg: Allocate) -> Allocated:
        assert self.store is not None
        new = self._new.pop(msg.job, None)
        state: JobState
        buffer: dict[str, np.ndarray | bytes]
        if new is not None:  # stored by us and untouched since: no frames, no state buffer
            state, frames, buffer = new, 0, {}
        else:
            state, frames, buffer = self.store.read(ops.load_state(msg.job), quick=True)  # one job's journal
        if msg.mark_running is not None and state != "running" and "running" not in JOB_TRANSITIONS[state]:
            raise IllegalTransition(f"job {msg.job!r} is {state}: it is not run (again)", field="job")
        slots = self.slots.allocate(
            msg.job,
            msg.slots,
            msg.state,
            msg.constants,
            device=msg.device,
            plan=msg.plan,
            calibration=msg.calibration,
        )
        self.slots.restore(msg.job, frames, buffer if msg.resume else {})
        if msg.mark_running is not None and state != "running":
            # Written behind: before anything the job commits later, but nobody waits for it.
            transition = ops.set_job_state(
                msg.job, "running", msg.mark_running, expect=[state], plan=msg.plan, calibration=msg.calibration
            )
            announce = partial(self._announce, msg.job, "running", msg.mark_running)
            self._write_behind(_Op(transition, done=None, then=announce))
        return Allocated(job=msg.job, slots=[s.info() for s in slots.slots], frame=slots.frame, nbytes=slots.nbytes)

    @handles(Write)
    def _write_slots(self, msg: Write, env: Envelope) -> Written | Awaitable[Written]:
        if msg.finish is not None and not msg.commit:
            raise AwenError("finish ends the job with this frame: it needs commit = true", field="finish")
        if msg.allocate is not None:
            if msg.allocate.job != msg.job:
                raise AwenError(f"the allocation is for {msg.allocate.job}, the write for {msg.job}", field="allocate")
            allocated = self._allocate_request(msg.allocate)
            if not isinstance(allocated, Allocated):  # its acceptance is still on its way
                return self._write_once_allocated(allocated, msg)
        return self._write_allocated(msg)

    async def _write_once_allocated(self, allocating: Awaitable[Allocated], msg: Write) -> Written:
        await allocating
        written = self._write_allocated(msg)
        return written if isinstance(written, Written) else await written

    def _write_allocated(self, msg: Write) -> Written | Awaitable[Written]:
        self.slots.write(msg.job, msg.frame, msg.writer, [(v.slot, v.value) for v in msg.values])
        if not msg.commit:
            return Written(job=msg.job, frame=msg.frame, committed=False)
        return self._write_and_commit(msg)

    async def _write_and_commit(self, msg: Write) -> Written:
        await self._commit(msg.job, msg.frame, None, finish=msg.finish, reason=msg.reason)
        return Written(job=msg.job, frame=msg.frame, committed=True)

    @handles(Read)
    def _read_slots(self, msg: Read, env: Envelope) -> Values:
        values = self.slots.read(msg.job, msg.slots)
        return Values(job=msg.job, frame=self.slots.job(msg.job).frame, values=values)

    @handles(Clear)
    def _clear(self, msg: Clear, env: Envelope) -> None:
        self.slots.clear(msg.job, msg.slots)

    @handles(CommitFrame)
    async def _commit_frame(self, msg: CommitFrame, env: Envelope) -> FrameCommitted:
        results = await self._commit(msg.job, msg.frame, msg.phase)
        return FrameCommitted(job=msg.job, frame=msg.frame, results=results)

    async def _commit(
        self, job: str, frame: int, phase: int | None, *, finish: FinalState | None = None, reason: str = ""
    ) -> int:
        """Commit the open frame; with ``finish``, end the job in the same transaction and free its slots."""
        snapshot = self.slots.prepare_commit(job, frame)
        slots = self.slots.job(job)
        committed = self._commits[job] = trio.Event()
        frame_op = ops.commit_frame(
            snapshot,
            phase=phase,
            device=slots.device,
            plan=slots.plan,
            calibration=slots.calibration,
            last=finish is not None,
        )
        end_op = ops.set_job_state(job, finish, reason) if finish is not None else None

        def commit(conn: sqlite3.Connection) -> tuple[int, tuple[JobState, int, int] | None]:
            return frame_op(conn), end_op(conn) if end_op is not None else None

        try:
            results, ended = await self._write(WriteOp(commit, frame_op.nbytes))
        except BaseException:
            self.slots.abort_commit(job, slots)
            raise
        finally:
            if self._commits.get(job) is committed:
                del self._commits[job]
            committed.set()
        # The job may have been freed, or allocated anew, while the frame was stored: only this allocation moves.
        self.slots.finish_commit(job, slots)
        if finish is not None and ended is not None:
            self._announce(job, finish, reason, ended)
            self.slots.free(job, slots)
        return results

    @handles(Free)
    def _free(self, msg: Free, env: Envelope) -> None:
        self.slots.free(msg.job)

    # --- jobs -------------------------------------------------------------------------------

    @handles(PutJob)
    async def _put_job(self, msg: PutJob, env: Envelope) -> JobStored:
        state: JobState = "queued" if msg.plan is None else "planned"

        def remember(result: tuple[str, int, bool]) -> None:  # at commit, in write order: before any later move
            if result[2]:
                self._remember_new(msg.job, state)

        stored = self._storing.setdefault(msg.job, trio.Event())
        try:
            put = ops.put_job(
                msg.job,
                msg.procedure if msg.procedure is not None else msg.circuit,
                shots=msg.shots,
                priority=msg.priority,
                device=msg.device,
                deadline=msg.deadline,
                submitter=msg.submitter or env.sender,
                plan=msg.plan,
                calibration=msg.calibration,
                key=msg.key,
                tags=msg.tags,
            )
            if msg.with_plan is not None:  # made at its submission: stored with it
                put = ops.after(_plan_op(msg.with_plan), put)
            job, seq, created = await self._write(put, remember)
        finally:
            if self._storing.get(msg.job) is stored:
                del self._storing[msg.job]
            stored.set()
        if created:
            log.debug("%s: stored %s: seq %d, %s", self.name, msg.job, seq, "planned" if msg.plan else "queued")
            self._jobs_total.inc(state="queued")
            self.publish_soon(JobStateChanged(job=msg.job, state="queued", previous=None, reason="accepted"))
            if msg.plan is not None:
                self._jobs_total.inc(state="planned")
                planned = f"plan {msg.plan}"
                self.publish_soon(JobStateChanged(job=msg.job, state="planned", previous="queued", reason=planned))
        return JobStored(job=job, seq=seq, created=created)

    def _remember_new(self, job: str, state: JobState) -> None:
        self._new[job] = state
        if len(self._new) > NEW_JOBS_KEPT:  # a long queue: its oldest jobs read their state when they run
            del self._new[next(iter(self._new))]

    @handles(SetJobState)
    async def _set_job_state(self, msg: SetJobState, env: Envelope) -> JobStateSet:
        self._new.pop(msg.job, None)
        moved = await self._write(
            ops.set_job_state(
                msg.job, msg.state, msg.reason, expect=msg.expect, plan=msg.plan, calibration=msg.calibration
            ),
            lambda _moved: self._new.pop(msg.job, None),  # and again at commit: a put in the same batch came first
        )
        self._announce(msg.job, msg.state, msg.reason, moved)
        return JobStateSet(job=msg.job, state=msg.state, previous=moved[0])

    def _announce(self, job: str, state: JobState, reason: str, moved: tuple[JobState, int, int]) -> None:
        """A job's committed move to ``state`` (``moved``: the state it left, its frames and results)."""
        previous, frames, results = moved
        log.debug("%s: %s %s -> %s (%d frames): %s", self.name, job, previous, state, frames, reason[:200])
        self._jobs_total.inc(state=state)
        self.publish_soon(JobStateChanged(job=job, state=state, previous=previous, reason=reason))
        if state in TERMINAL_STATES:
            self.publish_soon(
                ResultsComplete(job=job, state=state, frames=frames, results=results, partial=state != "completed")
            )

    @handles(GetJob)
    async def _get_job(self, msg: GetJob, env: Envelope) -> Job:
        return Job(record=await self._read(ops.get_job(msg.job)))

    @handles(QueryJobs)
    async def _query_jobs(self, msg: QueryJobs, env: Envelope) -> Jobs:
        query = ops.query_jobs(
            states=msg.states,
            device=msg.device,
            since=msg.since,
            until=msg.until,
            key=msg.key,
            tags=msg.tags,
            limit=msg.limit,
            newest=msg.newest,
        )
        return Jobs(jobs=await self._read(query))

    # --- plans, results, calibrations -------------------------------------------------------

    @handles(PutPlan)
    async def _put_plan(self, msg: PutPlan, env: Envelope) -> PlanStored:
        created = await self._write(_plan_op(msg))
        return PlanStored(plan=msg.plan, created=created)

    @handles(GetPlan)
    async def _get_plan(self, msg: GetPlan, env: Envelope) -> StoredPlan:
        return await self._read(ops.get_plan(msg.plan))

    @handles(QueryResults)
    async def _query_results(self, msg: QueryResults, env: Envelope) -> Results:
        query = ops.query_results(msg.job, slots=msg.slots, values=msg.values)
        if not msg.record:
            state, results = await self._read(query)
            return Results(job=msg.job, state=state, partial=state != "completed", results=results)
        record, (state, results) = await self._read(ops.together(ops.get_job(msg.job), query))
        return Results(job=msg.job, state=state, partial=state != "completed", results=results, record=record)

    @handles(QueryDeviceResults)
    async def _query_device_results(self, msg: QueryDeviceResults, env: Envelope) -> DeviceResults:
        query = ops.query_device_results(msg.device, since=msg.since, until=msg.until, limit=msg.limit)
        return DeviceResults(results=await self._read(query))

    @handles(Export)
    async def _export(self, msg: Export, env: Envelope) -> Exported:
        exports = (self.config.store_path.parent / "exports").resolve()
        path = (exports / (msg.path or f"{msg.job}.{msg.format}")).resolve()
        if not path.is_relative_to(exports):  # a client does not choose where on this machine the actor writes
            raise AwenError(
                f"an export goes to the data directory's exports/ folder: {str(msg.path)[:200]!r} leads out of it",
                field="path",
            )
        assert self.store is not None
        store = self.store

        def export() -> int:
            return store.read(lambda conn: ops.export_job(conn, msg.job, msg.format, path))

        try:
            size = await trio.to_thread.run_sync(export, limiter=self._reader)
        except OSError as exc:
            raise AwenError(f"cannot write the export {path}: {exc.strerror}", field="path") from None
        return Exported(job=msg.job, path=str(path), size=size)

    @handles(PutCalibration)
    async def _put_calibration(self, msg: PutCalibration, env: Envelope) -> CalibrationStored:
        body = ops.StoredCalibration(
            fits=msg.fits, uncertainties=msg.uncertainties, residuals=msg.residuals, data=msg.data
        )
        version = await self._write(ops.put_calibration(msg.device, msg.identity, body, msg.note))
        self.publish(CalibrationAdded(device=msg.device, version=version))
        return CalibrationStored(device=msg.device, version=version)

    @handles(GetCalibration)
    async def _get_calibration(self, msg: GetCalibration, env: Envelope) -> Calibration:
        return await self._read(ops.get_calibration(msg.device, msg.version))

    @handles(ListCalibrations)
    async def _list_calibrations(self, msg: ListCalibrations, env: Envelope) -> Calibrations:
        return Calibrations(calibrations=await self._read(ops.list_calibrations(msg.device)))

    @handles(QueryEvents)
    async def _query_events(self, msg: QueryEvents, env: Envelope) -> EventLog:
        query = ops.query_events(
            prefix=msg.prefix, since=msg.since, until=msg.until, after_seq=msg.after_seq, limit=msg.limit
        )
        return EventLog(events=await self._read(query))

    @handles(LogEvent)
    async def _log_event_durably(self, msg: LogEvent, env: Envelope) -> None:
        await self._write(ops.log_events([(time.time(), msg.type, env.sender, pack(msg.body))]))

    @handles(GetStoreInfo)
    async def _store_info(self, msg: GetStoreInfo, env: Envelope) -> StoreInfo:
        assert self.store is not None
        counts = await self._read(ops.counts())
        path = self.store.path
        return StoreInfo(
            path=str(path),
            schema_version=self.store.schema_version,
            file_bytes=self._file_bytes(),
            allocated_jobs=len(self.slots.jobs),
            allocated_bytes=self.slots.nbytes,
            writable=os.access(path, os.W_OK) and os.access(path.parent, os.W_OK),
            free_bytes=shutil.disk_usage(path.parent).free,
            **counts,
        )

    def _file_bytes(self) -> int:
        """The store's size on disk: its database file and its WAL."""
        assert self.store is not None
        path = self.store.path
        size = 0
        for file in (path, path.with_name(path.name + "-wal")):
            with contextlib.suppress(FileNotFoundError):  # the WAL comes and goes
                size += file.stat().st_size
        return size


def _plan_op(msg: PutPlan) -> WriteOp[bool]:
    return ops.put_plan(
        msg.plan, msg.body, job=msg.job, device=msg.device, calibration=msg.calibration, metrics=msg.metrics
    )


def open_store(data_dir: str | os.PathLike[str], *, readonly: bool = True) -> Store:
    """The store in a data directory, for tools that read it without a running actor."""
    return Store(Path(data_dir).expanduser() / "store.sqlite3", readonly=readonly)
