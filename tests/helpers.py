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
