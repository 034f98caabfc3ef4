"""awen: a runtime for photonic lab hardware.

For a scientist: ``lab = awen.connect()`` reaches the lab's running daemon
(``awen up``) from a script or a notebook, ``async with awen.open_lab() as
lab`` from trio; docs/client.md is the tutorial. The rest of this package is
the command line (`awen.cli`) and what it runs; the runtime itself lives in
the top-level packages, layered as docs/architecture.md draws them: `actors`
(the actors and the lab they make), `runtime` (the actor runtime), `drivers`
(devices), `protocol` (the wire and the domain types) and `sim` (the
simulated chip).
"""

from typing import Any

__version__ = "0.1.0"

_CLIENT = (
    "connect",
    "open_lab",
    "Lab",
    "AsyncLab",
    "Job",
    "AsyncJob",
    "Result",
    "ClientError",
    "DaemonUnreachable",
    "CircuitRefused",
    "JobFailed",
    "JobNotFound",
    "NotFound",
    "KeyConflict",
    "RequestRefused",
    "WaitTimeout",
)


_CIRCUIT = ("Circuit", "CircuitBuilder")


def __getattr__(name: str) -> Any:
    # The client is imported when first used, so that the command line starts without it.
    if name in _CLIENT:
        from . import client

        return getattr(client, name)
    if name in _CIRCUIT:  # how a circuit is written (docs/circuits.md), beside the client that submits it
        from protocol import circuit

        return getattr(circuit, name)
    raise AttributeError(f"module 'awen' has no attribute {name!r}")
