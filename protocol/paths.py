"""Where a daemon lives: its data directory, its lock and info files, and its client endpoints.

Decision 0014 §2: one rule for every command, so that ``awen up`` and a client
looking for it agree without being told.

* The data directory: ``$AWEN_DATA_DIR``, else ``$XDG_DATA_HOME/awen``, else
  ``~/.local/share/awen`` (what platformdirs gives on Linux).
* ``DATA_DIR/awen.lock``: held (``flock``) by the one daemon of that directory.
* ``DATA_DIR/awen.json``: what the running daemon is and where it listens.
* ``ipc://DATA_DIR/awen.sock``, and ``tcp://127.0.0.1:7460``: where clients reach it.

Nothing here does I/O beyond reading the environment it is given.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_PORT = 7460
"""The door's default tcp port: a user port below Linux's ephemeral range (32768-60999)."""

SUN_PATH_MAX = 107
"""Bytes of a unix socket's path the kernel takes (``sun_path`` is 108 with its terminating NUL)."""

DAEMON_FILE = "awen.json"
LOCK_FILE = "awen.lock"
SOCKET_FILE = "awen.sock"


def default_data_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$AWEN_DATA_DIR``, else ``$XDG_DATA_HOME/awen``, else ``~/.local/share/awen``."""
    explicit = environ.get("AWEN_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = environ.get("XDG_DATA_HOME")
    if base:
        return Path(base).expanduser() / "awen"
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / ".local" / "share" / "awen"


def daemon_file(data_dir: str | os.PathLike[str]) -> Path:
    """``DATA_DIR/awen.json``: the running daemon's pid, version and endpoints."""
    return Path(data_dir) / DAEMON_FILE


def lock_file(data_dir: str | os.PathLike[str]) -> Path:
    """``DATA_DIR/awen.lock``: locked for as long as a daemon runs on that directory."""
    return Path(data_dir) / LOCK_FILE


def ipc_endpoint(data_dir: str | os.PathLike[str], environ: Mapping[str, str] = os.environ) -> str:
    """``ipc://DATA_DIR/awen.sock``; a path too long for a unix socket moves to the runtime directory.

    Past `SUN_PATH_MAX` bytes the socket is ``$XDG_RUNTIME_DIR/awen-HASH.sock``
    (else in the temporary directory), HASH the first 12 hex digits of the
    data directory's path's SHA-256: the same data directory, the same socket.
    """
    path = Path(data_dir) / SOCKET_FILE
    if len(os.fsencode(str(path))) <= SUN_PATH_MAX:
        return f"ipc://{path}"
    digest = hashlib.sha256(os.fsencode(str(Path(data_dir)))).hexdigest()[:12]
    base = environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return f"ipc://{Path(base) / f'awen-{digest}.sock'}"


def default_tcp_endpoint(port: int = DEFAULT_PORT) -> str:
    """``tcp://127.0.0.1:PORT``: loopback only (clients do not authenticate yet)."""
    return f"tcp://127.0.0.1:{port}"


def is_loopback(address: str) -> bool:
    """Whether a client endpoint reaches this machine only: ``ipc://`` or tcp on a loopback host.

    ``tcp://127.x.x.x:PORT``, ``tcp://[::1]:PORT`` and ``tcp://localhost:PORT``
    are; ``tcp://0.0.0.0``, ``tcp://*``, any other host or scheme are not.
    """
    if address.startswith("ipc://"):
        return True
    if not address.startswith("tcp://"):
        return False
    try:
        host = urlsplit(address).hostname
    except ValueError:
        return False
    if host is None:
        # urlsplit finds no host in "tcp://*:7460" or "tcp://::1:7460"; take what precedes the last colon.
        rest = address[len("tcp://") :]
        host = rest.rpartition(":")[0].strip("[]") if ":" in rest else rest
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
