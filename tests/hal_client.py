"""A client process that fires heater requests at a running HAL, all at once, and says what came back.

``python -m tests.hal_client SYSTEM.json REQUESTS.json OUT.json``: REQUESTS is a
list of ``{"volts": [...] or null, "changes": {"heater": volts}}``; every
request goes out at once, each from its own trio task, and OUT gets one entry
per request, in order: ``{"readback", "mismatched", "version"}`` for an
accepted one, ``{"error", "message"}`` for a refused one.
tests/test_hal_system.py runs several of these side by side.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import trio

from protocol.hal import SetHeaters
from runtime import Actor, RemoteError, ResolvedSystem


async def fire(system_file: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    system = ResolvedSystem.load(system_file)
    client = Actor(f"hammer-{os.getpid()}", system.runtime_for())
    outcomes: list[dict[str, Any]] = [{} for _ in requests]

    async def one(i: int, request: dict[str, Any]) -> None:
        volts = None if request["volts"] is None else np.asarray(request["volts"], dtype=np.float64)
        changes = {int(h): float(v) for h, v in request["changes"].items()}
        try:
            with trio.fail_after(60):
                reply = await client.request("hal", SetHeaters(device="chip", volts=volts, changes=changes))
        except RemoteError as exc:
            outcomes[i] = {"error": exc.code, "message": exc.message}
        else:
            outcomes[i] = {
                "readback": reply.readback.tolist(),
                "mismatched": reply.mismatched,
                "version": reply.version,
            }

    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        async with trio.open_nursery() as requests_nursery:
            for i, request in enumerate(requests):
                requests_nursery.start_soon(one, i, request)
        nursery.cancel_scope.cancel()
    return outcomes


def main(system_file: str, requests_file: str, out_file: str) -> None:
    with open(requests_file) as f:
        requests = json.load(f)
    outcomes = trio.run(fire, system_file, requests)
    with open(out_file, "w") as f:
        json.dump(outcomes, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
