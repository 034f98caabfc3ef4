"""Coverage-guided fuzzing of the envelope codec: `protocol.Codec.decode` and the frame walk before it.

Properties, checked on every input:

* ``Codec.decode`` raises nothing but `ProtocolError` (its subclasses), whatever
  the bytes; a refusal is at most `MAX_ERROR_TEXT` characters, names a field
  of at most `MAX_FIELD_PATH` characters and a sender of at most 256;
* a frame it accepts encodes again and decodes to the same message type;
* the frame walk (`protocol._structure.check_structure`) agrees with a plain
  recursive reading of the same bytes by the msgpack package: it refuses
  exactly the values nested deeper than the depth limit, or declaring more
  items than the item limit (checked with small limits, so that the fuzzer
  reaches both), and `skip_value` steps over exactly one value.

Each input is used three ways: as a whole frame; as the body of an envelope of
a catalog type chosen by its first byte (so that the fuzzer reaches every body
decoder); and as the ``data`` of a ``sys.ping`` (a free-form field, where
anything goes).

Run it (atheris is not one of awen's dependencies; install it for the run)::

    .venv/bin/python -m pip install atheris
    .venv/bin/python stress/fuzz_codec.py -max_total_time=600 /tmp/corpus-codec

Any libFuzzer option works (``-runs=``, ``-jobs=``, ``-max_len=``); a crash
is written to ``crash-<hash>`` and replayed with ``stress/fuzz_codec.py
crash-<hash>``. tests/test_hostile.py checks the same properties with
hypothesis on every ``make test``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if __name__ == "__main__":  # fuzzing: what is fuzzed is instrumented for coverage as it is imported
    import atheris

    with atheris.instrument_imports(include=["protocol", "msgspec"]):
        import protocol.catalog  # noqa: F401

import msgpack  # noqa: E402
import numpy as np  # noqa: E402

from protocol import (  # noqa: E402
    MAX_ERROR_TEXT,
    MAX_FIELD_PATH,
    Codec,
    ProtocolError,
    make_envelope,
)
from protocol._message import MAX_SENDER  # noqa: E402
from protocol._structure import check_structure, skip_value  # noqa: E402
from protocol.catalog import CATALOG  # noqa: E402
from protocol.system import Ping  # noqa: E402
from stress._fuzzing import fuzz  # noqa: E402

CODEC = Codec(CATALOG)
SMALL = Codec(CATALOG, max_depth=8, max_values=64)
"""The same codec with limits small enough for the fuzzer to cross them often."""
TYPES = CATALOG.names()

HEADER = b"".join(
    msgpack.packb(k) + msgpack.packb(v)
    for k, v in {"v": 1, "id": 7, "from": "fuzz", "to": "actor", "re": None, "ts": 0.0}.items()
)

TOKENS = [
    "v",
    "id",
    "type",
    "from",
    "to",
    "re",
    "ts",
    "body",
    "data",
    "<f8",
    "|b1",
    "<c16",
    "<i8",
    *TYPES[:40],
]
"""libFuzzer's dictionary: the words a valid frame is made of."""


def require(condition: bool, *detail: object) -> None:
    """An assertion that ``python -O`` keeps."""
    if not condition:
        raise AssertionError(*detail)


def check_decode(codec: Codec, frame: bytes) -> None:
    try:
        env = codec.decode(frame)
    except ProtocolError as exc:
        error = exc
    else:
        again = codec.decode(codec.encode(env))
        require(type(again.body) is type(env.body), again.type, env.type)
        return
    require(len(error.message) <= MAX_ERROR_TEXT, len(error.message), error.message[:200])
    require(error.field is None or len(error.field) <= MAX_FIELD_PATH, error.field)
    require(error.sender is None or len(error.sender) <= MAX_SENDER, error.sender)


class _Map(list[tuple[Any, Any]]):
    """A map as the msgpack package read it, every pair kept (a dict would merge repeated keys)."""


def _depth_and_items(value: Any) -> tuple[int, int]:
    """Nesting depth and declared items of a value the msgpack package read (iteratively)."""
    deepest, items = 0, 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, _Map):
            deepest, items = max(deepest, level), items + 2 * len(node)
            for k, v in node:
                stack.extend(((k, level + 1), (v, level + 1)))
        elif isinstance(node, list | tuple) and not isinstance(node, msgpack.ExtType):  # ExtType is a namedtuple
            deepest, items = max(deepest, level), items + len(node)
            stack.extend((child, level + 1) for child in node)
    return deepest, items


def check_walk(frame: bytes) -> None:
    """The walk agrees with the msgpack package on what it can read whole."""
    try:
        value = msgpack.unpackb(frame, strict_map_key=False, use_list=False, raw=True, object_pairs_hook=_Map)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, RecursionError):
        check_structure(frame, 8, 64)  # it must not raise on anything the package cannot read either
        return
    deepest, items = _depth_and_items(value)
    verdict = check_structure(frame, 8, 64)
    too_deep, too_many = deepest > 8, items + 1 > 64
    if too_deep and too_many:  # the walk names whichever it met first
        require(verdict is not None, deepest, items)
    elif too_deep:
        require(verdict is not None and "levels deep" in verdict, deepest, verdict)
    elif too_many:
        require(verdict is not None and "items" in verdict, items, verdict)
    else:
        require(verdict is None, deepest, items, verdict)
    require(skip_value(frame, 0) == len(frame), skip_value(frame, 0), len(frame))


def as_body(data: bytes) -> bytes:
    """``data[1:]`` as the body of an envelope whose type ``data[0]`` picks."""
    msg_type = TYPES[data[0] % len(TYPES)] if data else "sys.ping"
    return b"\x88" + HEADER + _pack("type") + _pack(msg_type) + _pack("body") + data[1:]


def as_ping_data(data: bytes) -> bytes:
    return b"\x88" + HEADER + _pack("type") + _pack("sys.ping") + b"\xa4body\x81\xa4data" + data


def _pack(value: Any) -> bytes:
    return bytes(msgpack.packb(value))


def test_one_input(data: bytes) -> None:
    for frame in (data, as_body(data), as_ping_data(data)):
        check_decode(CODEC, frame)
        check_decode(SMALL, frame)
    check_walk(data)


def _seed_corpus(directory: Path) -> None:
    """A few valid inputs to start from, when the corpus directory is empty."""
    if any(directory.iterdir()):
        return
    seeds = [
        CODEC.encode(make_envelope(Ping(data=np.arange(6.0).reshape(2, 3)), sender="a", to="b", id=1)),
        CODEC.encode(make_envelope(Ping(data={"a": [1, 2.5, None, b"x"]}), sender="a", to="b", id=2)),
        msgpack.packb([[[[1]]], {"k": {"k": [True]}}]),
        b"\x06" + msgpack.packb({"job": "j", "slots": [{"name": "s", "dtype": "float64", "shape": [4]}], "device": ""}),
    ]
    for i, seed in enumerate(seeds):
        (directory / f"seed-{i}").write_bytes(seed)


def main(argv: list[str]) -> None:
    fuzz(argv, test_one_input, _seed_corpus, [msgpack.packb(token) for token in TOKENS])


if __name__ == "__main__":
    main(sys.argv)
