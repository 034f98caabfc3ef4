"""Request/reply between two processes: awen actors against raw pyzmq.

For each of ``ipc://`` and ``tcp://127.0.0.1``, in one run:

* raw: a blocking pyzmq ROUTER echo server in a child process, and a blocking
  DEALER client here, sending the same encoded ``sys.ping`` frame an actor sends;
* actor: an awen actor in a child process answering ``sys.ping``, and an actor
  here calling ``request()`` (encode, send, wait, decode, validate).

It prints round-trip p50/p99 over sequential requests and throughput with
``--window`` requests in flight, and each actor figure as a ratio to raw. The
issue's targets: actor throughput >= 0.5x raw, actor p99 <= 3x raw.

    python benchmarks/messaging.py [--requests N] [--window W]
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass

import trio
import zmq

from protocol import Codec, make_envelope
from protocol.catalog import CATALOG
from protocol.system import Ping
from runtime import Actor, Address, Directory, Runtime

PAYLOAD = b"x" * 64
WARMUP = 500


@dataclass
class Figures:
    p50_us: float
    p99_us: float
    per_second: float


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


# --- raw pyzmq ------------------------------------------------------------------------------


def serve_raw(address: str) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.bind(address)
    print("ready", flush=True)
    while True:
        frames = sock.recv_multipart()
        if frames[-1] == b"stop":
            break
        sock.send_multipart(frames)
    sock.close(linger=0)
    context.term()


def measure_raw(address: str, frame: bytes, requests: int, window: int) -> Figures:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.connect(address)
    for _ in range(WARMUP):
        sock.send(frame)
        sock.recv()
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        sock.send(frame)
        sock.recv()
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(window):
        sock.send(frame)
    for i in range(requests):
        sock.recv()
        if i + window < requests:
            sock.send(frame)
    elapsed = time.perf_counter() - start
    sock.send(b"stop")
    sock.close(linger=1000)
    context.term()
    return Figures(percentile(times, 0.5) * 1e6, percentile(times, 0.99) * 1e6, requests / elapsed)


# --- the trio floor -------------------------------------------------------------------------


async def measure_trio_floor(address: str, frame: bytes, requests: int, window: int) -> Figures:
    """The least any trio client can do: raw pyzmq, one task per request, no codec.

    An owner task waits on the socket and wakes each request's task, as in
    awen, against the raw echo server. Shows how much of the gap to raw is
    trio's scheduling on this machine rather than awen.
    """
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(address)
    waiters: deque[trio.Event] = deque()
    pollin = int(zmq.POLLIN)

    def drain() -> None:
        while sock.getsockopt(zmq.EVENTS) & pollin:  # type: ignore[operator]
            sock.recv(zmq.NOBLOCK)
            waiters.popleft().set()

    async def owner() -> None:
        while True:
            drain()
            await trio.lowlevel.wait_readable(sock.FD)

    async def one() -> None:
        done = trio.Event()
        waiters.append(done)
        sock.send(frame, zmq.NOBLOCK)
        drain()
        await done.wait()

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(owner)
        for _ in range(WARMUP):
            await one()
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            await one()
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        async with trio.open_nursery() as workers:
            for i in range(window):
                workers.start_soon(worker, requests // window + (i < requests % window))
        elapsed = time.perf_counter() - start
        sock.send(b"stop")
        nursery.cancel_scope.cancel()
    trio.lowlevel.notify_closing(sock.FD)
    sock.close(linger=1000)
    return Figures(percentile(times, 0.5) * 1e6, percentile(times, 0.99) * 1e6, requests / elapsed)


# --- awen actors ----------------------------------------------------------------------------


def directory(address: str, events: str) -> Directory:
    return Directory({"server": Address(address=address, events=events)})


async def serve_actor(address: str, events: str) -> None:
    server = Actor("server", Runtime(directory(address, events)))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        print("ready", flush=True)


async def measure_actor(address: str, events: str, requests: int, window: int) -> Figures:
    client = Actor("client", Runtime(directory(address, events)))
    ping = Ping(data=PAYLOAD)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(30):
            await client.wait_peer("server")
        for _ in range(WARMUP):
            await client.request("server", ping)
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            await client.request("server", ping)
            times.append(time.perf_counter() - start)

        async def worker(count: int) -> None:
            for _ in range(count):
                await client.request("server", ping)

        start = time.perf_counter()
        async with trio.open_nursery() as workers:
            for i in range(window):
                workers.start_soon(worker, requests // window + (i < requests % window))
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return Figures(percentile(times, 0.5) * 1e6, percentile(times, 0.99) * 1e6, requests / elapsed)


# --- the run --------------------------------------------------------------------------------


def start_server(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError(f"benchmark server {args} did not start")
    return proc


def addresses(transport: str, run_dir: str, tag: str) -> tuple[str, str]:
    if transport == "ipc":
        return f"ipc://{run_dir}/{tag}.sock", f"ipc://{run_dir}/{tag}.events.sock"
    return f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"


def measure_round(
    transport: str, run_dir: str, frame: bytes, args: argparse.Namespace
) -> tuple[Figures, Figures, Figures]:
    raw_address, _ = addresses(transport, run_dir, "raw")
    server = start_server("--serve-raw", raw_address)
    try:
        raw = measure_raw(raw_address, frame, args.requests, args.window)
    finally:
        server.wait(timeout=10)
    server = start_server("--serve-raw", raw_address)
    try:
        floor = trio.run(measure_trio_floor, raw_address, frame, args.requests, args.window)
    finally:
        server.wait(timeout=10)
    address, events = addresses(transport, run_dir, "actor")
    server = start_server("--serve-actor", address, events)
    try:
        actor = trio.run(measure_actor, address, events, args.requests, args.window)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return raw, floor, actor


def median(figures: list[Figures]) -> Figures:
    return Figures(
        statistics.median(f.p50_us for f in figures),
        statistics.median(f.p99_us for f in figures),
        statistics.median(f.per_second for f in figures),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="raw and actor alternate this many times; medians")
    parser.add_argument("--serve-raw", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--serve-actor", nargs=2, metavar=("ADDRESS", "EVENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_raw:
        serve_raw(args.serve_raw)
        return
    if args.serve_actor:
        trio.run(serve_actor, *args.serve_actor)
        return

    frame = Codec(CATALOG).encode(make_envelope(Ping(data=PAYLOAD), sender="client", to="server", id=1))
    print(
        f"awen messaging benchmark: {args.requests} requests, {len(frame)}-byte frames, window {args.window}, "
        f"medians of {args.rounds} alternating rounds"
    )
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, pyzmq {zmq.__version__}")
    print()
    header = (
        f"{'transport':<10}{'side':<7}{'p50 us':>9}{'p99 us':>9}{'req/s':>10}   {'p99 vs raw':>10}{'req/s vs raw':>14}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="awen-bench-") as run_dir:
        for transport in ("ipc", "tcp"):
            rounds = [measure_round(transport, run_dir, frame, args) for _ in range(args.rounds)]
            raw, floor, actor = (median([r[i] for r in rounds]) for i in range(3))
            print(f"{transport:<10}{'raw':<7}{raw.p50_us:>9.0f}{raw.p99_us:>9.0f}{raw.per_second:>10.0f}")
            for side, figures in (("trio", floor), ("actor", actor)):
                print(
                    f"{'':<10}{side:<7}{figures.p50_us:>9.0f}{figures.p99_us:>9.0f}{figures.per_second:>10.0f}   "
                    f"{figures.p99_us / raw.p99_us:>9.2f}x{figures.per_second / raw.per_second:>13.2f}x"
                )
    print()
    print("raw: blocking pyzmq client and server. trio: the least a trio client can do (raw pyzmq,")
    print("one task per request, no codec) against the raw server. actor: awen actors on both sides.")
    print("targets: actor p99 <= 3x raw, actor req/s >= 0.5x raw")


if __name__ == "__main__":
    main()
