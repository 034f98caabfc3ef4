"""Small tools for tests that drive a plain zmq socket next to the runtime."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio
import zmq

REPO = Path(__file__).resolve().parents[1]


async def recv_message(sock: zmq.Socket[Any]) -> list[bytes]:
    """The next multipart message on a plain socket, waiting the trio way.

    Checks EVENTS before every wait: the fd is edge-triggered (see actors/_zmq.py).
    """
    while not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
        await trio.lowlevel.wait_readable(sock.FD)
    return sock.recv_multipart(zmq.NOBLOCK)


class LineReader:
    """Lines of a child process's output, read by a thread so that waiting can time out.

    (``select`` on a buffered pipe misses lines the buffer already holds.)
    """

    def __init__(self, stream: Any) -> None:
        import queue
        import threading

        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []

        def pump() -> None:
            try:
                for line in stream:
                    self._lines.put(line.rstrip("\n"))
            except (ValueError, OSError):  # the stream was closed under us: the test is over
                pass
            self._lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, prefix: str, timeout: float = 60.0, *, anywhere: bool = False) -> str:
        """The first line starting with ``prefix`` (holding it, if ``anywhere``); AssertionError if none comes."""
        import queue
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line starting with {prefix!r} within {timeout:g} s; saw {self.seen}"
                ) from None
            if line is None:
                raise AssertionError(f"output ended without a line starting with {prefix!r}; saw {self.seen}")
            self.seen.append(line)
            if line.startswith(prefix) or (anywhere and prefix in line):
                return line

    def rest(self, timeout: float = 60.0) -> list[str]:
        """Every line still to come, once the stream ends (the process exited)."""
        import queue

        lines: list[str] = []
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"the output did not end within {timeout:g} s") from None
            if line is None:
                return lines
            self.seen.append(line)
            lines.append(line)


def awen_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m awen.cli ARGS`` run to its end, as an operator runs it; its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "awen.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


@contextmanager
def awen_process(
    *args: str, python: str | Path = sys.executable, cwd: Path = REPO
) -> Iterator[tuple[subprocess.Popen[str], LineReader]]:
    """``python -m awen.cli ARGS`` as an operator runs it; its stdout and stderr as one stream of lines.

    ``python`` is this suite's by default (another venv's: awen as installed there). Ended on the way
    out (SIGTERM, then SIGKILL if it does not go), never left behind.
    """
    proc = subprocess.Popen(
        [str(python), "-m", "awen.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
    )
    try:
        yield proc, LineReader(proc.stdout)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


async def eventually(check: Any, *, within: float = 30.0, every: float = 0.02) -> Any:
    """Await ``check()`` until it returns something true (and return that); fail after ``within`` seconds.

    For state another process or actor reaches in its own time (a job's state in the store).
    """
    with trio.fail_after(within):
        while True:
            result = await check()
            if result:
                return result
            await trio.sleep(every)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (the kernel's pick: no fixed ports in tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def children_of(pid: int) -> list[int]:
    """The child processes of ``pid`` (the actors of an ``awen up``: each in a session of its own)."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def wait_gone(pids: list[int], seconds: float) -> None:
    """Until these processes exit; those still running after ``seconds`` are killed (they are the test's)."""
    deadline = time.monotonic() + seconds
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)  # readable once the process has exited: waited on, not polled
        except ProcessLookupError:
            continue
        try:
            readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            os.close(fd)
