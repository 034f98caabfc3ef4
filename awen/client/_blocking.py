"""The blocking client: `connect` gives a `Lab` that works in a script, in any thread, and in a notebook.

Every blocking `Lab` of a process runs its `AsyncLab` in one trio thread (the
portal), started on first use; a call hands its coroutine over with
``trio.from_thread.run`` and blocks until it is done. So a notebook cell, which
runs inside ipykernel's asyncio loop, blocks the way a script does, and one
thread owns each socket (decision 0014 §4). Ctrl-C (or Jupyter's interrupt)
in a blocked call cancels what the portal was doing for it and raises
`KeyboardInterrupt`: the wait is abandoned, never the job.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import trio

from protocol.calibration import Calibrated, CalibrationStatus
from protocol.circuit import Circuit, CircuitBuilder
from protocol.door import LabStatus, Welcome
from protocol.hal import DeviceInfo
from protocol.memory import Calibration, JobRecord
from protocol.scheduler import QueueState

from ._lab import AsyncJob, AsyncLab, connect_lab, single_error
from ._result import Result

T = TypeVar("T")

_END = object()


class _Portal:
    """The process's one trio thread for blocking clients."""

    _lock = threading.Lock()
    _instance: _Portal | None = None

    def __init__(self) -> None:
        ready = threading.Event()
        self.token: trio.lowlevel.TrioToken | None = None
        self.nursery: trio.Nursery | None = None

        async def serve() -> None:
            self.token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                ready.set()
                await trio.sleep_forever()

        self.thread = threading.Thread(target=trio.run, args=(serve,), name="awen-client", daemon=True)
        self.thread.start()
        ready.wait()

    @classmethod
    def get(cls) -> _Portal:
        with cls._lock:
            if cls._instance is None or not cls._instance.thread.is_alive():
                cls._instance = _Portal()
            return cls._instance

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``await fn(*args, **kwargs)`` in the portal; blocks this thread until it is done."""
        if threading.current_thread() is self.thread:
            raise RuntimeError("a blocking awen Lab was called from its own trio thread: use awen.open_lab there")
        scopes: list[trio.CancelScope] = []

        async def run() -> T:
            with trio.CancelScope() as scope:
                scopes.append(scope)
                return await fn(*args, **kwargs)
            raise KeyboardInterrupt  # cancelled because the caller was interrupted

        assert self.token is not None
        try:
            return trio.from_thread.run(run, trio_token=self.token)
        except KeyboardInterrupt:
            if scopes:
                self.token.run_sync_soon(scopes[0].cancel)
            raise

    def iterate(self, make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
        """A blocking iterator over an async one that runs in the portal (closed with the iterator)."""
        items: queue.Queue[Any] = queue.Queue(maxsize=1000)
        scope = trio.CancelScope()

        async def pump() -> None:
            try:
                with scope:
                    async for item in make():
                        await trio.to_thread.run_sync(items.put, item)
            except BaseException as exc:  # noqa: BLE001 - handed to the reading thread, raised there
                items.put(exc)
                return
            items.put(_END)

        assert self.token is not None
        assert self.nursery is not None
        nursery = self.nursery
        self.token.run_sync_soon(nursery.start_soon, pump)
        try:
            while True:
                item = items.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.token.run_sync_soon(scope.cancel)


class Lab:
    """A running lab, from a script or a notebook: `connect` makes one. Every call blocks until done."""

    def __init__(self, portal: _Portal, lab: AsyncLab, scope: trio.CancelScope) -> None:
        self._portal = portal
        self._lab = lab
        self._scope = scope

    def __repr__(self) -> str:
        return f"<Lab {self.welcome.lab} at {self._lab.endpoint}>"

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def welcome(self) -> Welcome:
        """What the daemon said of itself: its version, actors, devices, endpoints."""
        return self._lab.welcome

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        return self._portal.call(fn, *args, **kwargs)

    def submit(
        self,
        circuit: Circuit | CircuitBuilder | Mapping[str, Any] | str | os.PathLike[str],
        *,
        shots: int | None = None,
        priority: int | None = None,
        deadline: float | None = None,
        tags: Sequence[str] = (),
        key: str | None = None,
    ) -> Job:
        """Queue a circuit (a `Circuit`, a builder, its JSON as a dict, or a file); returns once it is stored."""
        submit = functools.partial(
            self._lab.submit, circuit, shots=shots, priority=priority, deadline=deadline, tags=tags, key=key
        )
        return Job(self, self._call(submit))

    def job(self, job: str) -> Job:
        return Job(self, self._lab.job(job))

    def result(self, job: str) -> Result:
        return self._call(self._lab.result, job)

    def wait(self, job: str, timeout: float | None = None) -> Result:
        return self._call(self._lab.wait, job, timeout)

    def cancel(self, job: str) -> None:
        self._call(self._lab.cancel, job)

    def jobs(
        self,
        *,
        state: str | Sequence[str] | None = None,
        since: float | None = None,
        tags: Sequence[str] = (),
        key: str | None = None,
        limit: int = 1000,
    ) -> list[JobRecord]:
        """The lab's jobs, oldest first: in these states, submitted since, with all these tags, under this key."""
        jobs = functools.partial(self._lab.jobs, state=state, since=since, tags=tags, key=key, limit=limit)
        return self._call(jobs)

    def queue(self) -> QueueState:
        return self._call(self._lab.queue)

    def pause(self, reason: str = "") -> None:
        self._call(self._lab.pause, reason)

    def resume(self) -> None:
        self._call(self._lab.resume)

    def calibrate(self, *, points: int | None = None, wait: bool = True) -> Calibrated | None:
        """Calibrate the chip now (joining a calibration already running); ``wait=False`` returns at once."""
        return self._call(functools.partial(self._lab.calibrate, points=points, wait=wait))

    def ping(self) -> float:
        """One round trip to the door (through this process's client thread), in seconds."""
        return self._call(self._lab.ping)

    def calibration_status(self) -> CalibrationStatus:
        return self._call(self._lab.calibration_status)

    def calibration(self, version: int | None = None, *, device: str | None = None) -> Calibration:
        return self._call(functools.partial(self._lab.calibration, version, device=device))

    def reset_interlock(self, device: str | None = None) -> None:
        self._call(self._lab.reset_interlock, device)

    def devices(self) -> list[DeviceInfo]:
        return self._call(self._lab.devices)

    def status(self) -> LabStatus:
        return self._call(self._lab.status)

    def events(self, *prefixes: str) -> Iterator[Any]:
        """Pushed events (envelopes) whose type starts with one of ``prefixes``, as they come; stop by breaking."""

        async def stream() -> AsyncIterator[Any]:
            async with self._lab.events(*prefixes) as events:
                async for env in events:
                    yield env

        return self._portal.iterate(stream)

    def close(self) -> None:
        """Disconnect (the lab and its jobs go on)."""
        token = self._portal.token
        if token is not None and self._portal.thread.is_alive():
            token.run_sync_soon(self._scope.cancel)


class Job:
    """A submitted job, blocking: ``job.wait()`` gives its `Result`."""

    def __init__(self, lab: Lab, job: AsyncJob) -> None:
        self.lab = lab
        self._job = job
        self.id = job.id
        self.created = job.created

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def wait(self, timeout: float | None = None) -> Result:
        """Until the job ends: its result; `JobFailed` (holding the partial result) unless it completed."""
        return self.lab._call(self._job.wait, timeout)

    def result(self) -> Result:
        return self.lab._call(self._job.result)

    def record(self) -> JobRecord:
        return self.lab._call(self._job.record)

    def state(self) -> str:
        return self.lab._call(self._job.state)

    def cancel(self) -> None:
        self.lab._call(self._job.cancel)

    def events(self) -> Iterator[Any]:
        """The job's events (progress, phases, its end), until it has ended."""
        return self.lab._portal.iterate(self._job.events)

    def progress(self) -> Iterator[tuple[int, int]]:
        """``(shots_done, shots_total)`` while it runs (for a progress bar)."""
        return self.lab._portal.iterate(self._job.progress)


def connect(url: str | None = None, *, client: str = "python", timeout: float = 2.0) -> Lab:
    """The lab's daemon, found where `awen.client._find` says; a blocking `Lab`.

    Raises:
        DaemonUnreachable: nothing answered within ``timeout`` at any place looked (each named).
    """
    portal = _Portal.get()

    async def hold(*, task_status: trio.TaskStatus[tuple[AsyncLab, trio.CancelScope]]) -> None:
        with trio.CancelScope() as scope, single_error():
            async with trio.open_nursery() as nursery:
                lab = await connect_lab(nursery, url, client=client, timeout=timeout)
                task_status.started((lab, scope))
                try:
                    await trio.sleep_forever()
                finally:
                    lab.close()

    async def start() -> tuple[AsyncLab, trio.CancelScope]:
        assert portal.nursery is not None
        started: tuple[AsyncLab, trio.CancelScope] = await portal.nursery.start(hold)
        return started

    lab, scope = portal.call(start)
    return Lab(portal, lab, scope)
