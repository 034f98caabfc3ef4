"""Real processes: actors in child processes over ipc:// and tcp://, supervision, shutdown."""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from protocol.system import GetStatus, Ping
from runtime import (
    Actor,
    PeerLostError,
    RequestTimeout,
    ResolvedSystem,
    Runtime,
    Supervisor,
    SupervisorGaveUp,
    open_system,
    parse_system,
)

from .helpers import awen_process

pytestmark = pytest.mark.system


def system(**overrides: Any) -> Any:
    config: dict[str, Any] = {
        "log_level": "warning",
        "runtime": {"heartbeat_interval": 0.2, "liveness": 3, "request_timeout": 10.0},
        "actor": [
            {"name": "alpha", "factory": "tests.actors:Relay", "config": {"peer": "beta"}},
            {"name": "beta"},
        ],
    }
    config.update(overrides)
    return parse_system(config)


def with_crashy(in_process: bool, **restart: Any) -> Any:
    """A system of ``alpha`` and ``crashy``, an actor that crashes as soon as it is up (in a process of its own,
    or as a task of the supervisor's). Its restart policy: 2 restarts within 60 s, 0.05 s apart, and ``restart``."""
    crashy = {
        "name": "crashy",
        "factory": "tests.actors:CrashOnStart",
        "process": not in_process,
        "restart": {"max_restarts": 2, "window": 60, "backoff": 0.05, **restart},
    }
    return system(actor=[{"name": "alpha"}, crashy])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; only its parent can reap it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@asynccontextmanager
async def running(config: Any) -> AsyncIterator[Supervisor]:
    """A system whose actors have all started and been heard from."""
    async with open_system(config) as supervisor:
        with trio.fail_after(30):
            await supervisor.wait_started()
            for spec in config.actors:
                await supervisor.wait_peer(spec.name)
        yield supervisor


async def next_event(stream: Any, type_: str, **fields: Any) -> Any:
    async for event in stream:
        if event.type == type_ and all(getattr(event.body, k) == v for k, v in fields.items()):
            return event
    raise AssertionError("event stream ended")


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
async def test_actors_in_separate_processes_talk(transport):
    async with running(system(transport=transport)) as supervisor:
        with trio.fail_after(30):
            # supervisor -> alpha (process) -> beta (process) -> alpha -> supervisor
            array = np.arange(1000, dtype="<f8").reshape(10, 100)
            pong = await supervisor.request("alpha", Ping(data=array))
        pids = {name: supervisor.pid_of(name) for name in ("alpha", "beta")}
        assert pong.pid == pids["beta"]
        assert len({os.getpid(), *pids.values()}) == 3
        assert np.array_equal(pong.data, array)
        for name in ("alpha", "beta"):
            assert supervisor.system.directory[name].address.startswith(f"{transport}://")
        status = await supervisor.request("alpha", GetStatus())
        assert status.peers["beta"].state == "up"
    assert not any(alive(pid) for pid in pids.values())


async def test_request_to_a_frozen_process_times_out():
    config = system(runtime={"heartbeat_interval": 0.2, "liveness": 1000, "request_timeout": 1.0})
    async with running(config) as supervisor:
        beta = supervisor.pid_of("beta")
        os.kill(beta, signal.SIGSTOP)
        try:
            start = trio.current_time()
            with pytest.raises(RequestTimeout, match=r"no reply from beta to sys\.ping within 1 s"):
                await supervisor.request("beta", Ping())
            assert trio.current_time() - start < 5
        finally:
            os.kill(beta, signal.SIGCONT)


async def test_a_hung_process_is_detected_by_heartbeat_killed_and_restarted():
    async with running(system()) as supervisor:
        beta = supervisor.pid_of("beta")
        async with supervisor.open_event_stream("") as events:
            os.kill(beta, signal.SIGSTOP)
            with trio.fail_after(30):
                lost = await next_event(events, "peer.lost", peer="beta")
                assert "no heartbeat" in lost.body.reason
                exited = await next_event(events, "actor.exited", actor="beta")
                assert (exited.body.pid, exited.body.returncode, exited.body.expected) == (beta, -9, False)
                started = await next_event(events, "actor.started", actor="beta")
                back = await next_event(events, "peer.up", peer="beta")
        assert started.body.pid != beta
        assert back.body.restarted
        assert not alive(beta)
        with trio.fail_after(10):
            assert (await supervisor.request("beta", Ping())).pid == started.body.pid


async def test_pending_requests_fail_at_once_when_the_peer_crashes():
    config = system(runtime={"heartbeat_interval": 0.2, "liveness": 3, "request_timeout": 60.0})
    async with running(config) as supervisor:
        client = Actor("client", Runtime(supervisor.runtime.directory, supervisor.options))
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            beta = supervisor.pid_of("beta")
            os.kill(beta, signal.SIGSTOP)  # it will never answer...
            start = trio.current_time()

            async def crash_soon() -> None:
                await trio.sleep(0.3)
                os.kill(beta, signal.SIGKILL)  # ...and now it is gone

            nursery.start_soon(crash_soon)
            with pytest.raises(PeerLostError, match="beta was lost"):
                await client.request("beta", Ping())
            assert trio.current_time() - start < 10  # not the 60 s request timeout
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("in_process", [False, True], ids=["process", "task"])
async def test_a_crashing_actor_whose_policy_gives_up_stops_the_system(in_process):
    config = with_crashy(in_process, give_up=True)
    seen: list[tuple[str, int]] = []
    places: dict[str, Any] = {}

    async def run_until_it_gives_up() -> None:
        async with open_system(config) as supervisor:
            places["run_dir"] = Path(supervisor.system.run_dir)
            async with supervisor.open_event_stream("actor.") as events:
                with trio.fail_after(60):
                    async for event in events:
                        if event.body.actor == "crashy":
                            seen.append((event.type, getattr(event.body, "restarts", -1)))
                        if event.type == "actor.gave_up":
                            break
                    places["alpha"] = supervisor.pid_of("alpha")
                    await trio.sleep_forever()  # the supervisor stops the system on its own

    with pytest.raises(BaseExceptionGroup) as caught:
        await run_until_it_gives_up()
    alpha, run_dir = places["alpha"], places["run_dir"]
    assert caught.group_contains(SupervisorGaveUp, match="gave up on crashy: 3 crashes in a row, none running 60 s")
    kinds = [kind for kind, _ in seen]
    assert kinds.count("actor.restarting") == 2
    assert kinds[-1] == "actor.gave_up"
    assert not alive(alpha)
    assert not await trio.Path(run_dir).exists()


@pytest.fixture
def awen_up(tmp_path):
    """``awen up`` on a two-actor system, as an operator starts it."""
    config = tmp_path / "system.toml"
    config.write_text(
        """
log_level = "info"
[runtime]
heartbeat_interval = 0.2

[[actor]]
name = "alpha"

[[actor]]
name = "beta"
address = "tcp://127.0.0.1:0"
"""
    )
    with awen_process("up", str(config)) as (proc, reader):
        line = reader.until("awen: up", timeout=60)
        yield proc, Path(line.rsplit(" ", 1)[1].strip()), reader


def child_pids(system_file: Path) -> dict[str, int]:
    system = ResolvedSystem.load(system_file)

    async def ask() -> dict[str, int]:
        client = Actor("test-client", system.runtime_for())
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            with trio.fail_after(20):
                pids = {name: (await client.request(name, GetStatus())).pid for name in ("alpha", "beta")}
            nursery.cancel_scope.cancel()
        return pids

    return trio.run(ask)


def wait_gone(pids: dict[str, int], seconds: float) -> list[str]:
    """Wait (on pidfds, no polling) until these processes exit; the names still running."""
    fds = {}
    for name, pid in pids.items():
        try:
            fds[name] = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
    try:
        deadline = time.monotonic() + seconds
        waiting = dict(fds)
        while waiting and time.monotonic() < deadline:
            ready, _, _ = select.select(list(waiting.values()), [], [], deadline - time.monotonic())
            waiting = {name: fd for name, fd in waiting.items() if fd not in ready}
    finally:
        for fd in fds.values():
            os.close(fd)
    return [name for name, pid in pids.items() if alive(pid)]


def test_sigterm_stops_everything_in_order_and_leaves_nothing(awen_up):
    proc, system_file, reader = awen_up
    run_dir = system_file.parent
    pids = child_pids(system_file)
    assert sorted(p.name for p in run_dir.glob("*.sock")) != []
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    reader.until("stopping beta", timeout=10, anywhere=True)
    reader.until("stopping alpha", timeout=10, anywhere=True)  # after beta: reverse start order
    reader.until("awen: stopped", timeout=10)
    assert wait_gone(pids, 5) == []
    assert not run_dir.exists()


def test_killed_supervisor_leaves_no_orphans(awen_up):
    proc, system_file, _reader = awen_up
    pids = child_pids(system_file)
    proc.kill()
    proc.wait(timeout=10)
    # Children watch their parent and stop on their own within a heartbeat or two.
    assert wait_gone(pids, 15) == []


@pytest.mark.parametrize("in_process", [False, True], ids=["process", "task"])
async def test_a_crash_looping_actor_is_reported_and_tried_ever_less_often_while_the_rest_goes_on(in_process):
    # A daemon left alone for months: one actor that keeps crashing must not stop the lab.
    config = with_crashy(in_process, backoff_max=0.4)
    looping: list[Any] = []
    async with open_system(config) as supervisor, supervisor.open_event_stream("actor.") as events:
        with trio.fail_after(60):
            async for event in events:
                if event.type == "actor.gave_up":
                    raise AssertionError("the supervisor gave up on the lab")
                if event.type == "actor.crash_looping":
                    looping.append(event.body)
                    if len(looping) == 4:
                        break
        pong = await supervisor.request("alpha", Ping(data=b"still here"))
        assert pong.data == b"still here"
    assert [body.crashes for body in looping] == [3, 4, 5, 6]
    assert [body.delay for body in looping] == [0.2, 0.4, 0.4, 0.4]  # doubling, then at most backoff_max
    expected = "crashing on purpose" if in_process else "exit status 1"
    assert all(body.actor == "crashy" and expected in body.reason for body in looping)
