"""Where a client looks for the daemon (decision 0014 §2), in order.

1. the URL it was given (``awen.connect(URL)``, ``--connect URL``): only there;
2. ``$AWEN_CONNECT``: only there;
3. the data directory's ``awen.json`` (``$AWEN_DATA_DIR``, else the user's data
   directory), written by a running ``awen up``: its endpoints, ipc first; a
   file no daemon holds (its lock can be taken) is stale and skipped;
4. the default port on loopback, ``tcp://127.0.0.1:7460``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from protocol.paths import default_data_dir, default_tcp_endpoint

from ..daemon import daemon_file_is_stale, read_daemon_file


def candidates(url: str | None = None, environ: Mapping[str, str] = os.environ) -> list[tuple[str | None, str]]:
    """``(endpoint, where it came from)`` in the order to try; an endpoint of None records a place with nothing."""
    if url:
        return [(url, "the address given")]
    if environ.get("AWEN_CONNECT"):
        return [(environ["AWEN_CONNECT"], "$AWEN_CONNECT")]
    found: list[tuple[str | None, str]] = []
    data_dir = default_data_dir(environ)
    info = read_daemon_file(data_dir)
    where = f"{data_dir}/awen.json"
    if info is None:
        found.append((None, f"{where} (no daemon recorded)"))
    elif daemon_file_is_stale(data_dir):
        found.append((None, f"{where} (stale: pid {info.get('pid')} no longer runs awen there)"))
    else:
        endpoints = [str(e) for e in info.get("endpoints", [])]
        found += [(e, where) for e in sorted(endpoints, key=lambda e: not e.startswith("ipc://"))]
    default = default_tcp_endpoint()
    if all(e != default for e, _ in found):
        found.append((default, "the default port"))
    return found
