"""How deep a MessagePack frame nests and how many values it holds, read without building anything.

msgspec, like every MessagePack decoder written in C, decodes nested arrays and
maps by recursion, guarded by the interpreter's recursion check: a frame nested
deep enough raises `RecursionError` at a depth that depends on the Python
version and on how deep the caller's stack already is, and even a header
decode that keeps the body raw must recurse to step over it. awen's limit is
its own and the same everywhere: `check_structure` walks the frame with an
explicit stack, stepping over strings, binaries and extension payloads by
their declared lengths, and refuses a frame that nests deeper than
`MAX_DEPTH` or declares more than `MAX_VALUES` items, before anything is
decoded or allocated. `envelope_fields` reads a refused frame's header the
same way, so that the refusal can still be addressed to its sender.

Both are pure functions over bytes. Frames that are not MessagePack at all
pass `check_structure` unharmed: the decoder says what is wrong with them.
"""

from __future__ import annotations

from typing import Final

MAX_DEPTH: Final = 64
"""Arrays and maps nest at most this many levels in a frame: the envelope is level 1, its body level 2."""

MAX_VALUES: Final = 2**22
"""A frame declares at most this many items in its arrays and maps (a map's pair counts as two)."""

_FIXED, _ARRAY, _MAP, _SIZED, _EXT, _BAD = range(6)


def _token_table() -> tuple[list[int], list[int]]:
    """For each lead byte: what kind of token it starts, and the number that goes with the kind.

    ``_FIXED``: the token's whole length. ``_ARRAY``/``_MAP``: the width of
    the count after the lead byte (0: in the lead byte). ``_SIZED`` (str, bin)
    and ``_EXT``: the width of the length after the lead byte (0: fixstr,
    length in the lead byte).
    """
    kind = [_BAD] * 256
    arg = [0] * 256
    for b in range(0x00, 0x80):  # positive fixint
        kind[b], arg[b] = _FIXED, 1
    for b in range(0xE0, 0x100):  # negative fixint
        kind[b], arg[b] = _FIXED, 1
    for b in range(0x80, 0x90):
        kind[b] = _MAP
    for b in range(0x90, 0xA0):
        kind[b] = _ARRAY
    for b in range(0xA0, 0xC0):
        kind[b] = _SIZED
    fixed = {0xC0: 1, 0xC2: 1, 0xC3: 1, 0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9}
    fixed |= {0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9, 0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18}
    for b, length in fixed.items():
        kind[b], arg[b] = _FIXED, length
    for b, width in {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}.items():
        kind[b], arg[b] = _SIZED, width
    for b, width in {0xC7: 1, 0xC8: 2, 0xC9: 4}.items():
        kind[b], arg[b] = _EXT, width
    for b, width in {0xDC: 2, 0xDD: 4}.items():
        kind[b], arg[b] = _ARRAY, width
    for b, width in {0xDE: 2, 0xDF: 4}.items():
        kind[b], arg[b] = _MAP, width
    return kind, arg


_KIND, _ARG = _token_table()
_CONTAINER_BYTES: Final = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
NOT_CONTAINERS: Final = bytes(b for b in range(256) if b not in _CONTAINER_BYTES)
"""Every byte that cannot open an array or a map: ``frame.translate(None, NOT_CONTAINERS)`` keeps those that can.

Every level of nesting needs its own such byte and every item at least one
byte, so a frame of at most `QUICK_BYTES` bytes, with no more such bytes than
the depth limit, is within both limits whatever it holds: the cheap test that
lets most frames skip `check_structure`."""
_ONE_BYTE_SCALARS: Final = bytes([*range(0x00, 0x80), *range(0xE0, 0x100), 0xC0, 0xC2, 0xC3])
QUICK_BYTES: Final = 4096
"""Frames longer than this are always walked (``translate`` would cost as much as the walk)."""


def check_structure(
    data: bytes | memoryview, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES, *, level: int = 1
) -> str | None:
    """What is wrong with a value's nesting or size, or None if nothing is.

    Walks the value once with an explicit stack (no recursion); strings,
    binaries and extension payloads are stepped over by their declared
    lengths. Bytes that are not valid MessagePack end the walk quietly (None):
    the decoder reports them.

    Args:
        data: The value: a frame, or an envelope's body.
        max_depth: The deepest level an array or map may be at.
        max_values: The most items the value's arrays and maps may declare.
        level: The level of ``data`` itself: 1 for a frame, 2 for a body.
    """
    deepest = max_depth - level  # open containers above the one being read, at most
    kinds, args = _KIND, _ARG
    end = len(data)
    pos = 0
    stack: list[int] = []  # for each open container, how many items its parent still has to read
    left = 1  # items still to read at this level: the frame is one value
    values = 1
    while True:
        while left == 0:
            if not stack:
                return None
            left = stack.pop()
        if pos >= end:
            return None  # truncated: the decoder says so
        lead = data[pos]
        kind = kinds[lead]
        left -= 1
        if kind == _FIXED:
            pos += args[lead]
        elif kind in (_ARRAY, _MAP):
            width = args[lead]
            if width:
                count = int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
                pos += 1 + width
            else:
                count = lead & 0x0F
                pos += 1
            if len(stack) > deepest:
                return f"frame nests arrays and maps more than {max_depth} levels deep; the limit is {max_depth}"
            if kind == _MAP:
                count *= 2
            values += count
            if values > max_values:
                return f"frame declares more than {max_values} items in its arrays and maps; the limit is {max_values}"
            if count:
                stack.append(left)
                left = count
                if kind == _ARRAY and count > 4:
                    pos, left = _skip_uniform_scalars(data, pos, count)
        elif kind == _SIZED:
            width = args[lead]
            if width:
                pos += 1 + width + int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
            else:
                pos += 1 + (lead & 0x1F)
        elif kind == _EXT:
            width = args[lead]
            pos += 2 + width + int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
        else:
            return None  # 0xc1 is not MessagePack: the decoder says so


def _skip_uniform_scalars(data: bytes | memoryview, pos: int, count: int) -> tuple[int, int]:
    """Step over an array's items at once when they are all scalars of one fixed size (a list of floats).

    Returns the position after them and the items left (0), or ``pos`` and
    ``count`` unchanged when the array is anything else.
    """
    lead = data[pos] if pos < len(data) else 0xC1
    if _KIND[lead] != _FIXED:
        return pos, count
    size = _ARG[lead]
    if size == 1:
        run = data[pos : pos + count]
        if len(run) == count and not bytes(run).translate(None, _ONE_BYTE_SCALARS):
            return pos + count, 0
        return pos, count
    if data[pos : pos + size * count : size] == bytes([lead]) * count:
        return pos + size * count, 0
    return pos, count


def skip_value(data: bytes, pos: int) -> int | None:
    """The position after the value that starts at ``pos``, however deep; None if the frame ends first."""
    kinds, args = _KIND, _ARG
    end = len(data)
    left = 1
    while left:
        if pos >= end:
            return None
        lead = data[pos]
        kind = kinds[lead]
        left -= 1
        width = args[lead]
        if kind == _FIXED:
            pos += width
        elif kind in (_ARRAY, _MAP):
            if width:
                count = int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
                pos += 1 + width
            else:
                count = lead & 0x0F
                pos += 1
            left += 2 * count if kind == _MAP else count
        elif kind == _SIZED:
            pos += 1 + width + int.from_bytes(data[pos + 1 : pos + 1 + width], "big") if width else 1 + (lead & 0x1F)
        elif kind == _EXT:
            pos += 2 + width + int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
        else:
            return None
    return pos if pos <= end else None


def envelope_fields(data: bytes, keys: frozenset[str]) -> dict[str, bytes] | None:
    """The encoded values of some top-level keys of a frame that is a map; None if it is not a map.

    Reads the map pair by pair, stepping over every other value with
    `skip_value` (no recursion, whatever their depth); a key that is not a
    short string is stepped over too. Each value found is returned as its
    MessagePack bytes, for the caller to decode as the type it expects.
    """
    if not data:
        return None
    lead = data[0]
    kind = _KIND[lead]
    if kind != _MAP:
        return None
    width = _ARG[lead]
    count = int.from_bytes(data[1 : 1 + width], "big") if width else lead & 0x0F
    pos: int | None = 1 + width
    wanted = {_fixstr(k): k for k in keys}
    found: dict[str, bytes] = {}
    for _ in range(count):
        assert pos is not None
        key_end = skip_value(data, pos)
        if key_end is None:
            break
        value_end = skip_value(data, key_end)
        if value_end is None:
            break
        name = wanted.get(data[pos:key_end])
        if name is not None:
            found[name] = data[key_end:value_end]
        pos = value_end
    return found


def _fixstr(text: str) -> bytes:
    raw = text.encode()
    assert len(raw) < 32
    return bytes([0xA0 + len(raw)]) + raw
