"""What an actor needs to know about the system it runs in.

`RuntimeOptions` are the tunables, `Directory` says where every actor listens,
and `Runtime` bundles them with the process-wide resources (the zmq context, the
`LocalNetwork` for ``mem://``), so that actors get everything passed in
explicitly instead of reaching for globals.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq

from protocol import DEFAULT_MAX_FRAME_BYTES, SYSTEM_CATALOG, Catalog, Codec, ConfigError

from ._transport import LocalNetwork, Transport, scheme_of


class RuntimeOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Tunables shared by the actors of one system (``[runtime]`` in the TOML file).

    Attributes:
        heartbeat_interval: Seconds between heartbeats each actor publishes.
        liveness: Heartbeats a peer may miss before it is declared lost.
        request_timeout: Ceiling on how long `Actor.request` waits for a reply;
            callers wanting less wrap the call in `trio.fail_after`.
        max_frame_bytes: Frames over this are refused with a ``too-large`` error.
        hwm: High-water mark: messages queued per socket or channel before
            senders wait (requests) or messages are dropped (events, replies to
            a peer that does not read).
        max_concurrent: Handlers an actor runs at once before it stops reading
            its mailbox (1 makes an actor handle one message at a time, in order).
        linger: Seconds queued outgoing frames are kept trying after a socket closes.
        stop_timeout: Seconds an actor's `Actor.teardown` may take when stopping.
    """

    heartbeat_interval: float = msgspec.field(default=1.0)
    liveness: int = 3
    request_timeout: float = 10.0
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    hwm: int = 1000
    max_concurrent: int = 256
    linger: float = 1.0
    stop_timeout: float = 5.0

    def __post_init__(self) -> None:
        positive = {
            "heartbeat_interval": self.heartbeat_interval,
            "liveness": self.liveness,
            "request_timeout": self.request_timeout,
            "max_frame_bytes": self.max_frame_bytes,
            "hwm": self.hwm,
            "max_concurrent": self.max_concurrent,
            "stop_timeout": self.stop_timeout,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"runtime.{name} must be positive, got {value!r}", field=f"runtime.{name}")
        if self.linger < 0:
            raise ConfigError(f"runtime.linger must be >= 0, got {self.linger!r}", field="runtime.linger")


class Address(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where one actor listens.

    Attributes:
        address: Requests and notices (a ROUTER socket, or a ``mem://`` mailbox).
        events: Its published events (a PUB socket, or a ``mem://`` publisher).
    """

    address: str
    events: str

    def __post_init__(self) -> None:
        scheme_of(self.address)
        scheme_of(self.events)


class Directory(Mapping[str, Address]):
    """Actor name to `Address`, for every actor of a system."""

    def __init__(self, entries: Mapping[str, Address] | None = None) -> None:
        self._entries = dict(entries or {})

    def __getitem__(self, name: str) -> Address:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Directory({self._entries!r})"

    def with_entry(self, name: str, address: Address) -> Directory:
        return Directory({**self._entries, name: address})

    def to_builtins(self) -> dict[str, Any]:
        return {name: msgspec.to_builtins(addr) for name, addr in self._entries.items()}

    @classmethod
    def from_builtins(cls, data: Mapping[str, Any]) -> Directory:
        return cls({name: msgspec.convert(entry, Address) for name, entry in data.items()})


@dataclass(frozen=True)
class Runtime:
    """Everything an actor is given by whoever starts it.

    Attributes:
        directory: Where every actor of the system listens.
        options: Shared tunables.
        local: The ``mem://`` network of this process, if actors use it.
        context: This process's zmq context.
        catalog: The message types spoken: the runtime's own by default; the
            lab's actors speak `protocol.catalog.CATALOG` (a system file's
            ``catalog`` names it, and `ResolvedSystem.runtime_for` passes it).
    """

    directory: Directory
    options: RuntimeOptions = field(default_factory=RuntimeOptions)
    local: LocalNetwork | None = None
    context: zmq.Context[Any] = field(default_factory=zmq.Context.instance)
    catalog: Catalog = SYSTEM_CATALOG

    def codec(self) -> Codec:
        return Codec(self.catalog, max_frame_bytes=self.options.max_frame_bytes)

    def transport(self) -> Transport:
        return Transport(
            context=self.context,
            local=self.local,
            hwm=self.options.hwm,
            linger=self.options.linger,
            max_frame_bytes=self.options.max_frame_bytes,
        )
