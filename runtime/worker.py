"""Run one actor of a system in this process: ``python -m runtime.worker SYSTEM.json NAME``.

The supervisor starts this; it is not meant to be run by hand. It builds the
actor from the resolved system file, tells the supervisor it is ready, and
serves until SIGTERM or SIGINT (a clean stop: teardown runs, unanswered
requests get ``actor-stopped``), or until its supervisor disappears.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import trio

from protocol import AwenError
from protocol.system import Ready

from ._actor import Actor
from ._logging import configure_logging, describe_failure, first_awen_error
from ._system import ActorSpec, ResolvedSystem, load_factory

log = logging.getLogger("awen.worker")


async def serve(system: ResolvedSystem, spec: ActorSpec) -> None:
    runtime = system.runtime_for()
    actor: Actor = load_factory(spec.factory)(spec.name, runtime, **spec.config)
    parent = os.getppid()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def run_actor(task_status: trio.TaskStatus[None]) -> None:
                await actor.run(task_status=task_status)
                nursery.cancel_scope.cancel()  # its main() returned: the process is done

            async def watch_signals() -> None:
                async for signum in signals:
                    log.info("%s: %s received, stopping", spec.name, signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            async def watch_parent() -> None:
                # Started in a session of its own, so nothing else stops us if
                # the supervisor is killed outright.
                await _wait_for_exit(parent, system.runtime.heartbeat_interval)
                log.error("%s: supervisor (pid %d) is gone; stopping", spec.name, parent)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            nursery.start_soon(watch_parent)
            await nursery.start(run_actor)
            await actor.send(system.supervisor, Ready(name=spec.name, pid=actor.pid, incarnation=actor.incarnation))


async def _wait_for_exit(pid: int, poll_interval: float) -> None:
    """Until process ``pid`` (our parent) exits."""
    try:
        # Linux: a pidfd becomes readable when the process exits; no polling.
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            if os.getppid() == pid:  # it may have gone before the fd was opened
                await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
        return
    while os.getppid() == pid:  # noqa: ASYNC110 - elsewhere, nothing announces a parent's death
        await trio.sleep(poll_interval)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m runtime.worker SYSTEM.json ACTOR-NAME", file=sys.stderr)
        return 2
    try:
        system = ResolvedSystem.load(args[0])
        spec = system.spec(args[1])
    except AwenError as exc:
        print(f"awen worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(system.log_level, actor=spec.name, fmt=system.log_format)
    try:
        trio.run(serve, system, spec)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            return 0
        log.critical("%s: %s", spec.name, describe_failure(exc), exc_info=first_awen_error(exc) is None)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
