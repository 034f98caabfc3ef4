"""Small tools for tests that drive a plain zmq socket next to the runtime."""

from __future__ import annotations

from typing import Any

import trio
import zmq


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
