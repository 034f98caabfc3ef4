"""Submit a circuit to a running awen and print its counts, with nothing but pyzmq and the msgpack package.

This is what a client in another language does (docs/protocol.md, "Clients"):
connect one DEALER to the door, send one MessagePack envelope per frame, match
replies by ``re``. Arrays arrive as MessagePack extension type 1, a msgpack
array ``[dtype, shape, bytes]`` inside.

    awen up                                   # in one terminal
    python examples/raw_client.py ipc://$HOME/.local/share/awen/awen.sock examples/hom.json
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import time
from typing import Any

import msgpack
import zmq

ids = itertools.count(random.getrandbits(32))
NAME = f"raw-client-{os.getpid()}"


def ext_hook(code: int, data: bytes) -> Any:
    """Extension type 1 is an array: ``[dtype, shape, raw bytes]``; here, a flat list of ints."""
    if code != 1:
        return msgpack.ExtType(code, data)
    dtype, _shape, raw = msgpack.unpackb(data)  # counts are 1-d: the shape is their length
    size = int(dtype[2:])
    big = dtype[0] == ">"
    return [
        int.from_bytes(raw[i : i + size], "big" if big else "little", signed=dtype[1] == "i")
        for i in range(0, len(raw), size)
    ]


def ask(sock: zmq.Socket[bytes], msg_type: str, body: dict[str, Any], to: str = "door") -> dict[str, Any]:
    """Send one request and wait for the reply that answers it (a pushed event is skipped)."""
    msg_id = next(ids)
    envelope = {"v": 1, "id": msg_id, "type": msg_type, "from": NAME, "to": to, "ts": time.time(), "body": body}
    sock.send(msgpack.packb(envelope))
    while True:
        if not sock.poll(70_000):
            raise SystemExit(f"no answer to {msg_type} within 70 s: is awen up?")
        reply: dict[str, Any] = msgpack.unpackb(sock.recv(), ext_hook=ext_hook)
        if reply.get("re") != msg_id:
            continue
        if reply["type"] == "sys.error":
            raise SystemExit(f"{msg_type}: {reply['body']['code']}: {reply['body']['message']}")
        answer: dict[str, Any] = reply["body"]
        return answer


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    endpoint, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        circuit = json.load(f)
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    welcome = ask(sock, "door.hello", {"client": "raw-client", "protocol": 1})
    print(f"lab {welcome['lab']}: awen {welcome['awen']}, actors {', '.join(sorted(welcome['actors']))}")
    accepted = ask(sock, "sched.submit", {"circuit": circuit, "key": f"raw-{random.getrandbits(48):x}"}, "scheduler")
    job = accepted["job"]
    print(f"job {job} accepted")
    while True:  # a long poll: the door answers when the job ends, or after timeout_s
        waited = ask(sock, "door.wait_job", {"job": job, "timeout_s": 30, "result": True})
        if waited["ended"]:
            break
    result = waited["result"]
    print(f"job {job}: {result['state']}, calibration {result['calibration']}, {result['shots']} shots")
    for reg in result["registers"]:
        counts = reg["counts"]
        bits = len(reg["modes"])
        top = sorted(range(len(counts)), key=lambda v: -counts[v])[:4]
        text = ", ".join(f"{v:0{bits}b}: {counts[v]}" for v in top if counts[v])
        print(f"register {reg['name']} (modes {reg['modes']} on detectors {reg['columns']}): {text}")
    for name, figure in result["figures"].items():
        print(f"{name}: {figure['value']}")
    sock.close()
    sys.exit(0 if result["state"] == "completed" else 1)


if __name__ == "__main__":
    main()
