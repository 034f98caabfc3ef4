"""Actors of one test in this process: a runtime over mem://, and actors a test can stop one by one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

from protocol import Catalog
from protocol.catalog import CATALOG
from runtime import Actor, Address, Directory, LocalNetwork, Runtime, RuntimeOptions

A = TypeVar("A", bound=Actor)


def mem_runtime(*names: str, heartbeat_interval: float = 0.5, catalog: Catalog = CATALOG) -> Runtime:
    """A runtime for the actors ``names``, every one in this process, talking over mem://."""
    directory = Directory({n: Address(address=f"mem://{n}", events=f"mem://{n}.ev") for n in names})
    options = RuntimeOptions(heartbeat_interval=heartbeat_interval)
    return Runtime(directory, options, local=LocalNetwork(), catalog=catalog)


@dataclass
class Running(Generic[A]):
    """An actor running in a cancel scope of its own: `stop` ends it alone, as a crash would."""

    actor: A
    scope: trio.CancelScope
    stopped: trio.Event

    async def stop(self) -> None:
        """Cancel the actor and wait until it has stopped (its teardown done)."""
        self.scope.cancel()
        await self.stopped.wait()


async def start_running(nursery: trio.Nursery, actor: A) -> Running[A]:
    """Start ``actor`` in ``nursery`` (returning once it is up), in a cancel scope of its own."""
    running = Running(actor, trio.CancelScope(), trio.Event())

    async def run(task_status: trio.TaskStatus[None]) -> None:
        try:
            with running.scope:
                await actor.run(task_status=task_status)
        finally:
            running.stopped.set()

    await nursery.start(run)
    return running
