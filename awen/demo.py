"""``awen demo``: a small system of actor processes, and what they do.

Until the job path exists, the demo shows the runtime everything else stands
on: a supervisor starts two actors in processes of their own, one reached over
``ipc://`` and one over ``tcp://``; requests go back and forth (numpy arrays
included), a malformed frame gets an error reply, a crash is detected and the
actor restarted, and everything stops in order.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import trio
import zmq

from protocol import Codec
from protocol.catalog import CATALOG
from protocol.system import GetStatus, Ping
from runtime import Supervisor, configure_logging, open_system, parse_system

PINGS = 300


def say(text: str = "") -> None:
    print(text, flush=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def _round_trips(supervisor: Supervisor, name: str) -> None:
    times = []
    for _ in range(PINGS):
        start = time.perf_counter()
        await supervisor.request(name, Ping())
        times.append(time.perf_counter() - start)
    say(
        f"  supervisor -> {name:<5} sys.ping x{PINGS}: round trip p50 {statistics.median(times) * 1e6:4.0f} us, "
        f"p99 {_percentile(times, 0.99) * 1e6:4.0f} us"
    )


def _send_garbage(address: str) -> str:
    """What any ZeroMQ client gets back for bytes that are not an awen message."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address)
        sock.send(b"\xc1 this is not msgpack")
        reply = Codec(CATALOG).decode(sock.recv())
    finally:
        sock.close()
    return f"{reply.type} code={reply.body.code!r}: {reply.body.message}"


async def _demo(verbose: bool) -> int:
    config = parse_system(
        {
            "transport": "ipc",
            "log_level": "info" if verbose else "critical",
            "runtime": {"heartbeat_interval": 0.25, "liveness": 3},
            "actor": [
                {"name": "alpha"},
                {"name": "beta", "address": "tcp://127.0.0.1:0", "events": "tcp://127.0.0.1:0"},
            ],
        }
    )
    say("awen demo: a supervisor and two actors in processes of their own")
    async with open_system(config) as supervisor:
        await supervisor.wait_started()
        run_dir = Path(supervisor.system.run_dir)
        pids = {}
        for name in ("alpha", "beta"):
            with trio.fail_after(10):
                await supervisor.wait_peer(name)
            address = supervisor.system.directory[name]
            pids[name] = supervisor.pid_of(name)
            say(f"  {name:<5} pid {pids[name]:<7} requests at {address.address}, events at {address.events}")
        say()
        say("Requests and replies (msgpack envelopes over ZeroMQ DEALER/ROUTER):")
        for name in ("alpha", "beta"):
            await _round_trips(supervisor, name)
        array = np.random.default_rng(1).normal(size=(512, 512))
        start = time.perf_counter()
        pong = await supervisor.request("beta", Ping(data=array))
        elapsed = time.perf_counter() - start
        same = isinstance(pong.data, np.ndarray) and np.array_equal(pong.data, array)
        say(
            f"  a {array.shape[0]}x{array.shape[1]} float64 array ({array.nbytes / 2**20:.0f} MiB) to beta and back "
            f"in {elapsed * 1e3:.1f} ms, {'identical' if same else 'CHANGED'}"
        )
        say()
        say("A frame that is not msgpack, from a plain ZeroMQ socket:")
        answer = await trio.to_thread.run_sync(_send_garbage, supervisor.system.directory["alpha"].address)
        say(f"  alpha answers {answer}")
        status = await supervisor.request("alpha", GetStatus())
        say(f"  and keeps serving: handled {status.handled}, malformed {status.malformed}, failed {status.failed}")
        say()
        say(f"A crash: killing beta (pid {pids['beta']}) with SIGKILL")
        async with supervisor.open_event_stream("") as events:
            supervisor.kill("beta")
            with trio.fail_after(30):
                async for event in events:
                    body = event.body
                    if event.type in ("actor.exited", "actor.restarting", "actor.started"):
                        say(f"  {event.sender:<10} {event.type:<17} {msg_summary(body)}")
                    elif event.type in ("peer.lost", "peer.up") and body.peer == "beta":
                        say(f"  {event.sender:<10} {event.type:<17} {msg_summary(body)}")
                        if event.type == "peer.up" and event.sender == supervisor.name:
                            break
        pong = await supervisor.request("beta", Ping())
        say(f"  beta answers again, from pid {pong.pid}")
        say()
        say("Stopping in reverse start order (beta, then alpha)")
    leftover = [name for name, pid in {**pids, "beta": pong.pid}.items() if _alive(pid)]
    run_dir_left = await trio.Path(run_dir).exists()
    say(f"  processes left: {', '.join(leftover) or 'none'}; run directory removed: {not run_dir_left}")
    return 1 if leftover or run_dir_left else 0


def msg_summary(body: object) -> str:
    fields = getattr(body, "__struct_fields__", ())
    return ", ".join(f"{f}={getattr(body, f)!r}" for f in fields)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_demo(*, verbose: bool = False) -> int:
    configure_logging("info" if verbose else "critical")
    return trio.run(_demo, verbose)
