"""The supervisor: starts a system's actors, restarts them, stops them in order.

It is an actor itself (so it has heartbeats, events and an address), and it is
the parent of every actor process. Start order is the order of the ``[[actor]]``
tables; each actor must report ready before the next starts. Shutdown goes in
reverse order: SIGTERM, a grace period, then SIGKILL, each step logged.
"""

from __future__ import annotations

import abc
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from protocol import AwenError
from protocol.system import (
    ActorCrashLooping,
    ActorExited,
    ActorGaveUp,
    ActorRestarting,
    ActorStarted,
    PeerLost,
    Ready,
)

from ._actor import Actor
from ._config import Runtime
from ._handlers import handles, subscribes
from ._logging import describe_failure
from ._system import ActorSpec, ResolvedSystem, SystemConfig, load_factory
from ._transport import LocalNetwork

log = logging.getLogger("awen.supervisor")

SYSTEM_FILE = "system.json"
"""The resolved system, in the run directory: what child processes and `awen status` read."""


class SupervisorGaveUp(AwenError):
    """An actor crashed more often than its restart policy allows; the system was stopped."""


class StartFailed(AwenError):
    """An actor did not come up."""


class _Child(abc.ABC):
    """One actor under supervision: how to start it, wait for it, and stop it."""

    pid: int = 0
    incarnation: int = 0

    def __init__(self, supervisor: Supervisor, spec: ActorSpec) -> None:
        self.supervisor = supervisor
        self.spec = spec
        self.ready = trio.Event()

    @abc.abstractmethod
    async def start(self) -> None:
        """Until the actor reports ready; `StartFailed` if it does not."""

    @abc.abstractmethod
    async def wait(self) -> tuple[int | None, str]:
        """Until the actor exits: (process return code or None, reason)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop politely, then by force."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop at once (an actor that hangs, or a drill)."""


class _ProcessChild(_Child):
    """An actor in a child process: ``python -m runtime.worker SYSTEM NAME``."""

    process: trio.Process | None = None

    async def start(self) -> None:
        self.ready = trio.Event()
        command = [sys.executable, "-m", "runtime.worker", str(self.supervisor.system_file), self.spec.name]
        # A session of its own: Ctrl-C in a terminal reaches only the
        # supervisor, which then stops the actors in order.
        self.process = await trio.lowlevel.open_process(command, start_new_session=True)
        self.pid = self.process.pid
        process = self.process
        with trio.move_on_after(self.spec.start_timeout) as timer:
            async with trio.open_nursery() as race:

                async def exited() -> None:
                    await process.wait()
                    race.cancel_scope.cancel()

                race.start_soon(exited)
                await self.ready.wait()
                race.cancel_scope.cancel()
        if process.returncode is not None:
            raise StartFailed(
                f"{self.spec.name} (pid {self.pid}) exited with status {process.returncode} while starting"
            )
        if timer.cancelled_caught:
            await self._terminate(grace=1.0)
            raise StartFailed(
                f"{self.spec.name} (pid {self.pid}) did not report ready within {self.spec.start_timeout:g} s"
            )

    async def wait(self) -> tuple[int | None, str]:
        assert self.process is not None
        code = await self.process.wait()
        return code, _describe_status(code)

    async def stop(self) -> None:
        await self._terminate(grace=self.supervisor.options.stop_timeout + 1.0)

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    async def _terminate(self, *, grace: float) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        log.info("stopping %s (pid %d): SIGTERM", self.spec.name, process.pid)
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(grace):
            await process.wait()
            return
        log.warning("%s (pid %d) did not stop within %.1f s: SIGKILL", self.spec.name, process.pid, grace)
        process.kill()
        await process.wait()


class _TaskChild(_Child):
    """An actor running as a task in the supervisor's process."""

    def __init__(self, supervisor: Supervisor, spec: ActorSpec, nursery: trio.Nursery) -> None:
        super().__init__(supervisor, spec)
        self._nursery = nursery
        self._scope = trio.CancelScope()
        self._exited = trio.Event()
        self._error: BaseException | None = None

    async def start(self) -> None:
        factory = load_factory(self.spec.factory)
        actor = factory(self.spec.name, self.supervisor.child_runtime(), **self.spec.config)
        self._scope, self._exited, self._error = trio.CancelScope(), trio.Event(), None
        self.pid, self.incarnation = os.getpid(), actor.incarnation

        async def run(task_status: trio.TaskStatus[None]) -> None:
            try:
                with self._scope:
                    await actor.run(task_status=task_status)
            except Exception as exc:
                self._error = exc
                log.error("%s crashed", self.spec.name, exc_info=exc)
            finally:
                self._exited.set()

        try:
            await self._nursery.start(run)
        except RuntimeError as exc:  # it ended before reporting itself started
            raise StartFailed(f"{self.spec.name} failed while starting: {self._error or exc}") from self._error
        self.ready.set()

    async def wait(self) -> tuple[int | None, str]:
        await self._exited.wait()
        if self._error is not None:
            return None, f"raised {describe_failure(self._error)}"
        return None, "returned"

    async def stop(self) -> None:
        self._scope.cancel()
        await self._exited.wait()

    def kill(self) -> None:
        self._scope.cancel()


def _describe_status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class Supervisor(Actor):
    """Runs a resolved system until `shutdown` (or until it gives up on an actor).

    Use `open_system` rather than constructing one directly: it owns the run
    directory and its cleanup.
    """

    KIND = "supervisor"

    def __init__(self, system: ResolvedSystem, *, local: LocalNetwork | None = None) -> None:
        self.system = system
        self.local = local if local is not None else LocalNetwork()
        super().__init__(system.supervisor, system.runtime_for(local=self.local))
        self.system_file = Path(system.run_dir) / SYSTEM_FILE
        self.children: dict[str, _Child] = {}
        self.gave_up: ActorGaveUp | None = None
        self._shutdown = trio.Event()
        self._started = trio.Event()
        self._shutting_down = False
        self._restarts = self.metrics.counter("awen_actor_restarts_total", "Restarts after a crash.", ("actor",))
        for spec in system.actors:
            self._restarts.inc(0, actor=spec.name)  # 0 until it restarts: a rate needs the series from the start

    def child_runtime(self) -> Runtime:
        return self.system.runtime_for(local=self.local, context=self.runtime.context)

    def shutdown(self) -> None:
        """Stop every actor in reverse start order, then return from `run`."""
        self._shutting_down = True  # before anyone wakes: no restart may begin from now on
        self._shutdown.set()

    async def wait_started(self) -> None:
        """Until every actor has been started once (or the supervisor gave up)."""
        await self._started.wait()

    def pid_of(self, name: str) -> int:
        return self.children[name].pid

    def kill(self, name: str) -> None:
        """Kill an actor at once, as a crash would (for demonstrations and drills)."""
        self.children[name].kill()

    async def setup(self) -> None:
        self.system.dump(self.system_file)

    async def main(self) -> None:
        async with trio.open_nursery() as nursery:
            for spec in self.system.actors:
                if self._shutdown.is_set():
                    break
                await nursery.start(self._supervise, spec, nursery)
            self._started.set()
            await self._shutdown.wait()
            for name in reversed(list(self.children)):
                await self.children[name].stop()
        if self.gave_up is not None:
            raise SupervisorGaveUp(
                f"gave up on {self.gave_up.actor}: {self.gave_up.restarts} crashes in a row, none running "
                f"{self.gave_up.window:g} s (last: {self.gave_up.reason})"
            )

    async def _supervise(self, spec: ActorSpec, nursery: trio.Nursery, task_status: trio.TaskStatus[None]) -> None:
        policy = spec.restart
        crashes = 0
        """Crashes in a row: since the actor last ran ``policy.window`` seconds without crashing."""
        reported = False
        while not self._shutting_down:
            child: _Child = _ProcessChild(self, spec) if spec.process else _TaskChild(self, spec, nursery)
            self.children[spec.name] = child
            try:
                await child.start()
            except StartFailed as exc:
                code, reason = None, str(exc)
                log.error("%s", exc)
            else:
                if not reported:
                    task_status.started()
                    reported = True
                log.info("started %s (pid %d)", spec.name, child.pid)
                self.publish(ActorStarted(actor=spec.name, pid=child.pid, restarts=crashes))
                if self._shutting_down:  # shutdown began while it was starting
                    await child.stop()
                began = trio.current_time()
                code, reason = await child.wait()
                if trio.current_time() - began >= policy.window:
                    if crashes > policy.max_restarts:
                        log.warning("%s had been crash-looping; it ran %g s before this exit", spec.name, policy.window)
                    crashes = 0  # it ran long enough: this crash starts a new count
            if self._shutting_down:
                self.publish(ActorExited(actor=spec.name, pid=child.pid, returncode=code, expected=True, reason=reason))
                break
            crashes += 1
            delay = self._report_crash(spec, child.pid, code, reason, crashes)
            if delay is None:
                break
            with trio.move_on_after(delay):
                await self._shutdown.wait()
        if not reported:
            task_status.started()

    def _report_crash(self, spec: ActorSpec, pid: int, code: int | None, reason: str, crashes: int) -> float | None:
        """Log and publish the ``crashes``-th crash in a row; the delay before the restart, or None: gave up."""
        policy = spec.restart
        log.error("%s (pid %d) crashed: %s", spec.name, pid, reason)
        self._mark_lost(spec.name, f"its process exited ({reason})")
        self.publish(ActorExited(actor=spec.name, pid=pid, returncode=code, expected=False, reason=reason))
        delay = policy.delay(crashes)
        if crashes > policy.max_restarts and policy.give_up:
            self.gave_up = ActorGaveUp(actor=spec.name, restarts=crashes, window=policy.window, reason=reason)
            log.critical(
                "giving up on %s: it crashed %d times in a row, none running %g s (policy allows %d restarts "
                "and gives up); last: %s. Stopping the system.",
                spec.name,
                crashes,
                policy.window,
                policy.max_restarts,
                reason,
            )
            self.publish(self.gave_up)
            self.shutdown()
            return None
        if crashes > policy.max_restarts:
            # A daemon left alone for months does not stop the lab for one actor: it says so, loudly, and
            # keeps trying, ever less often. The HAL makes its devices safe when it hears of it.
            log.log(
                logging.CRITICAL if crashes == policy.max_restarts + 1 else logging.ERROR,
                "%s is crash-looping: %d crashes in a row, none running %g s (last: %s); trying again in "
                "%.3g s. The rest of the lab goes on; fix its cause (its log above says why it failed).",
                spec.name,
                crashes,
                policy.window,
                reason,
                delay,
            )
            self.publish(
                ActorCrashLooping(actor=spec.name, crashes=crashes, window=policy.window, delay=delay, reason=reason)
            )
        else:
            log.warning(
                "restarting %s in %.2f s (crash %d in a row; past %d it is reported crash-looping)",
                spec.name,
                delay,
                crashes,
                policy.max_restarts,
            )
        self.publish(ActorRestarting(actor=spec.name, delay=delay, restarts=crashes, window=policy.window))
        self._restarts.inc(actor=spec.name)
        return delay

    @handles(Ready)
    def _on_ready(self, msg: Ready, env: Any) -> None:
        child = self.children.get(msg.name)
        if child is not None and child.pid == msg.pid:
            child.incarnation = msg.incarnation
            child.ready.set()

    @subscribes(PeerLost.TYPE)
    def _on_peer_lost(self, msg: PeerLost, env: Any) -> None:
        # Our own liveness check says a child stopped sending heartbeats while
        # its process lives on: it hangs. Kill it; the restart policy applies.
        child = self.children.get(msg.peer)
        if (
            env.sender == self.name
            and not self._shutting_down
            and isinstance(child, _ProcessChild)
            and child.ready.is_set()
            and child.process is not None
            and child.process.returncode is None
        ):
            log.error("%s (pid %d) hangs: %s; killing it", msg.peer, child.pid, msg.reason)
            child.kill()


@asynccontextmanager
async def open_system(config: SystemConfig, *, local: LocalNetwork | None = None) -> AsyncIterator[Supervisor]:
    """Start a system; on exit, stop it in order and remove its run directory.

    The run directory (ipc socket files, the resolved system file) is the
    configured one or a fresh temporary directory.
    """
    owned = config.run_dir is None
    run_dir = tempfile.mkdtemp(prefix="awen-") if owned else str(config.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    try:
        supervisor = Supervisor(config.resolve(run_dir), local=local)
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            try:
                yield supervisor
            finally:
                supervisor.shutdown()
    finally:
        _remove_run_files(run_dir, owned)


def _remove_run_files(run_dir: str, owned: bool) -> None:
    if owned:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for path in Path(run_dir).glob("*.sock"):
        path.unlink(missing_ok=True)
    (Path(run_dir) / SYSTEM_FILE).unlink(missing_ok=True)
