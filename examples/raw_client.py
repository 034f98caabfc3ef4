"""Talk to a running awen system with nothing but pyzmq and the msgpack package.

This is what a client in another language does (see docs/protocol.md): connect
a DEALER to an actor's address, send one MessagePack envelope per frame, match
replies by ``re``.

    awen up examples/system.toml          # in one terminal; it prints the system file
    python examples/raw_client.py SYSTEM_FILE alpha
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from typing import Any

import msgpack
import zmq

ids = itertools.count(1)


def envelope(msg_type: str, body: dict[str, Any], to: str) -> bytes:
    frame: bytes = msgpack.packb(
        {"v": 1, "id": next(ids), "type": msg_type, "from": "raw-client", "to": to, "ts": time.time(), "body": body}
    )
    return frame


def ask(sock: zmq.Socket[bytes], frame: bytes) -> dict[str, Any]:
    sock.send(frame)
    if not sock.poll(5000):
        raise SystemExit("no reply within 5 s")
    reply: dict[str, Any] = msgpack.unpackb(sock.recv())
    return reply


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    with open(sys.argv[1]) as f:
        directory = json.load(f)["directory"]
    actor = sys.argv[2]
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(directory[actor]["address"])

    pong = ask(sock, envelope("sys.ping", {"data": b"hello"}, actor))
    print("ping ->", pong["type"], pong["body"])
    status = ask(sock, envelope("sys.get_status", {}, actor))
    print("status ->", status["type"], {k: v for k, v in status["body"].items() if k != "peers"})
    wrong = ask(sock, envelope("sys.ping", {"dat": 1}, actor))
    print("a misspelt field ->", wrong["type"], wrong["body"])
    sock.close()


if __name__ == "__main__":
    main()
