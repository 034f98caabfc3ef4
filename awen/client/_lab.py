"""The trio client: `open_lab` gives an `AsyncLab`, connected to a daemon's door.

One `runtime.Connection` (a DEALER) to the door; every request a user makes
is one of the door's (`protocol.door`) or one it forwards. A daemon that
restarts under a waiting client is waited for: requests that get no answer
are sent again (every one of them is idempotent at the door: a submission
carries its key), and a new incarnation of the door is greeted again.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import msgspec
import trio

from protocol import AwenError, Codec, Envelope, ErrorCode, Request
from protocol.calibration import Calibrate, Calibrated, CalibrationStatus, GetCalibrationStatus
from protocol.catalog import CATALOG
from protocol.circuit import Circuit, CircuitBuilder, load_circuit, parse_circuit
from protocol.door import DOOR, GetLabStatus, GetResult, Hello, LabStatus, Subscribe, WaitJob, Welcome
from protocol.hal import DeviceInfo, ListDevices, ResetInterlock
from protocol.memory import (
    TERMINAL_STATES,
    Calibration,
    GetCalibration,
    GetJob,
    GetPlan,
    JobRecord,
    QueryJobs,
    StoredPlan,
)
from protocol.plan import Plan
from protocol.scheduler import Accepted, Cancel, GetQueue, Pause, QueueState, Resume, Submit, Validate
from protocol.system import Heartbeat, Ping
from runtime import Connection, RemoteError, RequestTimeout

from ._errors import (
    CircuitRefused,
    DaemonUnreachable,
    JobFailed,
    JobNotFound,
    KeyConflict,
    NotFound,
    RequestRefused,
    WaitTimeout,
)
from ._find import candidates
from ._result import Result

log = logging.getLogger("awen.client")

RETRYABLE = frozenset(
    {ErrorCode.ACTOR_STOPPED, ErrorCode.PEER_LOST, ErrorCode.NOT_READY, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT}
)
"""Refusals a restarting lab gives: the request is sent again."""

REQUEST_S = 15.0
"""How long one try of a request waits for its answer before it is sent again."""
PATIENCE_S = 120.0
"""How long a request (other than a wait) keeps trying through a daemon's restart."""
POLL_S = 30.0
"""One long poll of a wait."""
WATCH_S = 1.0
"""A request unanswered this long has the door pinged this often, to see whether the daemon restarted under it."""
RENEW_S = 10.0
"""Subscriptions are renewed this often (the door forgets a client silent for its lease)."""


def as_circuit(circuit: Circuit | CircuitBuilder | Mapping[str, Any] | str | os.PathLike[str]) -> Circuit:
    """A circuit from what a user has: a `Circuit`, a builder, its JSON as a dict, or a path to its file."""
    if isinstance(circuit, Circuit):
        return circuit
    if isinstance(circuit, CircuitBuilder):
        return circuit.build()
    if isinstance(circuit, Mapping):
        return parse_circuit(dict(circuit))
    return load_circuit(Path(circuit).read_bytes())


class AsyncLab:
    """A connection to a running lab (made by `open_lab`)."""

    def __init__(self, nursery: trio.Nursery, conn: Connection, welcome: Welcome, client: str) -> None:
        self._nursery = nursery
        self._conn = conn
        self.welcome = welcome
        self.client = client
        self._names = {kind: name for name, kind in welcome.actors.items()}
        self._streams: dict[int, tuple[tuple[str, ...], trio.MemorySendChannel[Envelope]]] = {}
        self._stream_ids = 0
        self.dropped = 0

    @property
    def endpoint(self) -> str:
        return self._conn.address

    def _actor(self, kind: str) -> str:
        return self._names.get(kind, kind)

    # --- asking, through restarts ---------------------------------------------------------

    async def _ask(
        self, to: str, body: Request[Any], *, try_s: float = REQUEST_S, patience_s: float = PATIENCE_S
    ) -> Any:
        """``body``'s reply, sent again while the lab restarts (for up to ``patience_s``); refusals raised as errors."""
        give_up = trio.current_time() + patience_s
        delay = 0.05
        while True:
            try:
                return await self._request(to, body, try_s)
            except RequestTimeout:
                if trio.current_time() >= give_up:
                    raise DaemonUnreachable(
                        [(self.endpoint, f"no answer to {body.TYPE} for {patience_s:g} s")]
                    ) from None
                await self._greet_again()
            except RemoteError as exc:
                if exc.code not in RETRYABLE or trio.current_time() >= give_up:
                    raise _client_error(exc, body) from None
                await trio.sleep(delay * (0.5 + random.random()))
                delay = min(2 * delay, 2.0)

    async def _request(self, to: str, body: Request[Any], try_s: float) -> Any:
        """One try of ``body``, given up (`RequestTimeout`) as soon as the door is seen to be a new one.

        A request the daemon's old incarnation took dies with it unanswered (a kill -9, a crash): without
        this a wait would notice only at the end of its long poll. So a request not answered within
        `WATCH_S` has the door pinged every `WATCH_S`; a pong from another incarnation ends the try.
        """
        if try_s <= WATCH_S:
            return await self._conn.request(to, body, timeout=try_s)
        answer: list[Any] = []
        failed: list[Exception] = []
        async with trio.open_nursery() as nursery:

            async def ask() -> None:
                try:
                    answer.append(await self._conn.request(to, body, timeout=try_s))
                except Exception as exc:  # noqa: BLE001 - raised below, outside the nursery (no exception group)
                    failed.append(exc)
                nursery.cancel_scope.cancel()

            async def watch() -> None:
                await self._door_replaced()
                nursery.cancel_scope.cancel()

            nursery.start_soon(ask)
            nursery.start_soon(watch)
        if failed:
            raise failed[0]
        if not answer:
            raise RequestTimeout(f"the door at {self.endpoint} restarted while {body.TYPE} was asked")
        return answer[0]

    async def _door_replaced(self) -> None:
        """Returns once the door answers a ping from an incarnation other than the one that welcomed us."""
        while True:
            await trio.sleep(WATCH_S)
            try:
                pong = await self._conn.request(DOOR, Ping(), timeout=WATCH_S)
            except (RequestTimeout, RemoteError):
                continue  # down, or restarting: ask again
            if pong.incarnation != self.welcome.incarnation:
                return

    async def _greet_again(self) -> None:
        """After a silence: say hello (a new door forgets its clients), subscribe again."""
        try:
            welcome = await self._conn.request(DOOR, Hello(client=self.client), timeout=2.0)
        except (AwenError, trio.TooSlowError):
            return
        if welcome.incarnation != self.welcome.incarnation:
            self.welcome = welcome
            await self._resubscribe()

    # --- jobs -------------------------------------------------------------------------------

    async def submit(
        self,
        circuit: Circuit | CircuitBuilder | Mapping[str, Any] | str | os.PathLike[str],
        *,
        shots: int | None = None,
        priority: int | None = None,
        deadline: float | None = None,
        tags: Sequence[str] = (),
        key: str | None = None,
    ) -> AsyncJob:
        """Queue a circuit; returns once the lab has stored it. The same ``key`` never makes a second job."""
        c = as_circuit(circuit)
        changes = {k: v for k, v in (("shots", shots), ("priority", priority), ("deadline", deadline)) if v is not None}
        if changes:
            c = msgspec.structs.replace(c, **changes)
        body = Submit(circuit=c, key=key or f"auto:{uuid.uuid4().hex}", tags=list(tags))
        try:
            accepted: Accepted = await self._ask(self._actor("scheduler"), body)
        except RequestRefused as exc:
            if exc.code != ErrorCode.INVALID_CIRCUIT:
                raise
            validation = await self._ask(self._actor("scheduler"), Validate(circuit=c))
            raise CircuitRefused(exc.message, [msgspec.to_builtins(p) for p in validation.problems]) from None
        return AsyncJob(self, accepted.job, created=accepted.created)

    def job(self, job: str) -> AsyncJob:
        """A handle on a job already submitted."""
        return AsyncJob(self, job, created=False)

    async def record(self, job: str) -> JobRecord:
        reply = await self._ask(self._actor("memory"), GetJob(job=job))
        record: JobRecord = reply.record
        return record

    async def result(self, job: str) -> Result:
        """The job's results now (partial if it has not completed)."""
        return Result(await self._ask(DOOR, GetResult(job=job)))

    async def wait(self, job: str, timeout: float | None = None) -> Result:
        """Until the job ends; its `Result`. Raises `JobFailed` (with the partial result) unless it completed.

        Long polls of the door; a daemon restarted meanwhile is waited for.
        """
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        while True:
            left = deadline - trio.current_time()
            if left <= 0:
                raise WaitTimeout(f"job {job} did not end within {timeout:g} s; it goes on")
            poll = min(POLL_S, left)
            waited = await self._ask(
                DOOR, WaitJob(job=job, timeout_s=poll, result=True), try_s=poll + REQUEST_S, patience_s=left
            )
            if waited.ended and waited.result is not None:
                result = Result(waited.result)
                if result.state != "completed":
                    raise JobFailed(job, result.state, result.reason, result)
                return result

    async def plan(self, plan: str) -> Plan:
        """A stored execution plan (a result's ``plan``): where each logical mode was placed, phase by phase."""
        stored: StoredPlan = await self._ask(self._actor("memory"), GetPlan(plan=plan))
        return stored.body

    async def cancel(self, job: str, reason: str = "cancelled by the client") -> None:
        await self._ask(self._actor("scheduler"), Cancel(job=job, reason=reason))

    async def jobs(
        self,
        *,
        state: str | Sequence[str] | None = None,
        since: float | None = None,
        tags: Sequence[str] = (),
        key: str | None = None,
        limit: int = 1000,
    ) -> list[JobRecord]:
        """The lab's jobs, oldest first: in these states, submitted since, with all these tags, under this key."""
        states = [state] if isinstance(state, str) else list(state or [])
        query = msgspec.convert(
            {"states": states, "since": since, "tags": list(tags), "key": key, "limit": limit}, QueryJobs
        )
        reply = await self._ask(self._actor("memory"), query)
        return list(reply.jobs)

    # --- the lab ----------------------------------------------------------------------------

    async def queue(self) -> QueueState:
        state: QueueState = await self._ask(self._actor("scheduler"), GetQueue())
        return state

    async def pause(self, reason: str = "") -> None:
        await self._ask(self._actor("scheduler"), Pause(reason=reason))

    async def resume(self) -> None:
        await self._ask(self._actor("scheduler"), Resume())

    async def calibrate(self, *, points: int | None = None, wait: bool = True) -> Calibrated | None:
        """Calibrate the chip now (a calibration already running is joined); its new version's figures.

        With ``wait=False`` it returns at once (None) and the lab calibrates on; `calibration_status`
        says when it is done.
        """
        ask = functools.partial(
            self._ask, self._actor("calibration"), Calibrate(points=points), try_s=3600.0, patience_s=3600.0
        )
        if not wait:
            self._nursery.start_soon(_quietly, ask)
            return None
        done: Calibrated = await ask()
        return done

    async def ping(self) -> float:
        """One round trip to the door, in seconds."""
        began = trio.current_time()
        await self._conn.request(DOOR, Ping(), timeout=REQUEST_S)
        return trio.current_time() - began

    async def calibration_status(self) -> CalibrationStatus:
        status: CalibrationStatus = await self._ask(self._actor("calibration"), GetCalibrationStatus())
        return status

    async def calibration(self, version: int | None = None, *, device: str | None = None) -> Calibration:
        name = device or (self.welcome.devices[0] if self.welcome.devices else "chip")
        found: Calibration = await self._ask(self._actor("memory"), GetCalibration(device=name, version=version))
        return found

    async def reset_interlock(self, device: str | None = None) -> None:
        """Re-arm the chip's tripped interlock, once whatever tripped it is gone; its heaters stay at 0 V.

        The scheduler dispatches again once the HAL reports the reset. The reset does not remove a
        cause: a setting over the power limit trips the interlock again at its next heater write.
        """
        name = device or (self.welcome.devices[0] if self.welcome.devices else "chip")
        await self._ask(self._actor("hal"), ResetInterlock(device=name))

    async def devices(self) -> list[DeviceInfo]:
        reply = await self._ask(self._actor("hal"), ListDevices())
        return list(reply.devices)

    async def status(self) -> LabStatus:
        status: LabStatus = await self._ask(DOOR, GetLabStatus())
        return status

    # --- events -----------------------------------------------------------------------------

    @asynccontextmanager
    async def events(self, *prefixes: str, capacity: int = 1000) -> AsyncIterator[trio.MemoryReceiveChannel[Envelope]]:
        """Events whose type starts with one of ``prefixes`` (all if none), pushed by the door, while the block runs.

        A client that does not keep up loses events (counted in ``dropped``), never the lab's time.
        """
        send, receive = trio.open_memory_channel[Envelope](capacity)
        self._stream_ids += 1
        token = self._stream_ids
        self._streams[token] = (tuple(prefixes) or ("",), send)
        try:
            await self._resubscribe()
            if len(self._streams) == 1:
                self._nursery.start_soon(self._renew)
            yield receive
        finally:
            del self._streams[token]
            send.close()
            with trio.CancelScope(shield=True), trio.move_on_after(2), suppress(AwenError):
                await self._resubscribe()

    def _prefixes(self) -> list[str]:
        return sorted({p for prefixes, _ in self._streams.values() for p in prefixes})

    async def _resubscribe(self) -> None:
        await self._conn.request(DOOR, Subscribe(prefixes=self._prefixes()), timeout=REQUEST_S)

    async def _renew(self) -> None:
        while self._streams:
            await trio.sleep(RENEW_S)
            if self._streams:
                try:
                    await self._resubscribe()
                except AwenError:
                    await self._greet_again()

    def _on_push(self, env: Envelope) -> None:
        if isinstance(env.body, Heartbeat):
            return
        for prefixes, send in self._streams.values():
            if env.type.startswith(prefixes):
                try:
                    send.send_nowait(env)
                except trio.WouldBlock:
                    self.dropped += 1
                except trio.ClosedResourceError:
                    pass

    def close(self) -> None:
        self._conn.close()


class AsyncJob:
    """A submitted job: wait for it, read it, cancel it, follow it."""

    def __init__(self, lab: AsyncLab, job: str, *, created: bool) -> None:
        self.lab = lab
        self.id = job
        self.created = created
        """False: this key (or id) was submitted before, and this is that job."""

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    async def wait(self, timeout: float | None = None) -> Result:
        return await self.lab.wait(self.id, timeout)

    async def result(self) -> Result:
        return await self.lab.result(self.id)

    async def record(self) -> JobRecord:
        return await self.lab.record(self.id)

    async def state(self) -> str:
        return (await self.record()).state

    async def cancel(self) -> None:
        await self.lab.cancel(self.id)

    async def events(self) -> AsyncIterator[Envelope]:
        """This job's events (progress, phases, its end) until it has ended."""
        async with self.lab.events("exec.", "sched.job_", "mem.results_complete") as events:
            record = await self.record()
            if record.state in TERMINAL_STATES:
                return
            async for env in events:
                if getattr(env.body, "job", None) != self.id:
                    continue
                yield env
                if env.type == "mem.results_complete":
                    return

    async def progress(self) -> AsyncIterator[tuple[int, int]]:
        """``(shots_done, shots_total)`` as the job runs, until it ends."""
        async for env in self.events():
            if env.type == "exec.progress":
                yield env.body.shots_done, env.body.shots_total


async def _quietly(ask: Callable[[], Awaitable[Any]]) -> None:
    """A request nobody waits for: its failure is logged, not raised into the lab's nursery."""
    try:
        await ask()
    except AwenError as exc:
        log.warning("awen client: %s", exc)


def _client_error(exc: RemoteError, body: Request[Any]) -> AwenError:
    message = exc.remote_message
    if exc.code == ErrorCode.NOT_FOUND:
        about_a_job = isinstance(body, GetJob | GetResult | WaitJob | Cancel)
        return (JobNotFound if about_a_job else NotFound)(message, field=exc.field)
    if exc.code == ErrorCode.EXISTS:
        return KeyConflict(message, field=exc.field)
    return RequestRefused(exc.code, message, exc.field)


async def connect_lab(
    nursery: trio.Nursery, url: str | None = None, *, client: str = "python", timeout: float = 2.0
) -> AsyncLab:
    """The first daemon that answers, looked for in `candidates` order; `DaemonUnreachable` says where it looked."""
    looked: list[tuple[str, str]] = []
    for endpoint, where in candidates(url):
        if endpoint is None:
            looked.append((where, "nothing"))
            continue
        lab = await _try(nursery, endpoint, client, timeout, looked, where)
        if lab is not None:
            return lab
    raise DaemonUnreachable(looked)


async def _try(
    nursery: trio.Nursery, endpoint: str, client: str, timeout: float, looked: list[tuple[str, str]], where: str
) -> AsyncLab | None:
    name = f"{client}-{os.getpid()}-{random.getrandbits(32):08x}"
    holder: list[AsyncLab] = []
    conn = Connection(
        endpoint, name=name, codec=Codec(CATALOG), on_push=lambda env: holder[0]._on_push(env) if holder else None
    )
    await nursery.start(conn.run)
    try:
        welcome: Welcome = await conn.request(DOOR, Hello(client=client), timeout=timeout)
    except RequestTimeout:
        looked.append((f"{where} {endpoint}", f"no answer within {timeout:g} s"))
    except RemoteError as exc:
        looked.append((f"{where} {endpoint}", f"{exc.code}: {exc.remote_message}"))
    else:
        holder.append(AsyncLab(nursery, conn, welcome, client))
        return holder[0]
    conn.close()
    return None


@contextmanager
def single_error() -> Iterator[None]:
    """A nursery's one exception raised as itself, not in an `ExceptionGroup`: what a user catches.

    (``except DaemonUnreachable`` around ``awen.connect()``, ``except JobFailed`` in an ``open_lab`` block.)
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) != 1:
            raise
        raise leaves[0] from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@asynccontextmanager
async def open_lab(url: str | None = None, *, client: str = "python", timeout: float = 2.0) -> AsyncIterator[AsyncLab]:
    """Connect to the lab's daemon (trio): ``async with awen.open_lab() as lab: ...``."""
    with single_error():
        async with trio.open_nursery() as nursery:
            lab = await connect_lab(nursery, url, client=client, timeout=timeout)
            try:
                yield lab
            finally:
                lab.close()
                nursery.cancel_scope.cancel()
