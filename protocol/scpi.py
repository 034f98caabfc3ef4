"""SCPI framing and parsing, sans-IO: the Photonica device protocol's grammar.

Both ends of the device wire use this module: the simulator to read commands
and write replies, the drivers to write commands and read replies. Nothing here
does I/O; everything works on bytes and is tested without a socket.

The grammar (IEEE 488.2 / SCPI, the parts Photonica controllers use):

* A *message* is one line ending in ``\\n`` (a ``\\r`` before it is ignored).
  It holds one or more *commands* separated by ``;``; the replies to the
  queries among them are joined with ``;`` into one reply line.
* A command is a *header* (``HEATer:VOLTage``, matched case-insensitively in
  its long or short form: ``HEAT:VOLT``, ``heater:voltage``), a ``?`` for a
  query, then parameters separated by ``,``: numbers, mnemonics (``ON``),
  quoted strings, or *definite-length blocks*.
* A block is ``#``, one digit d, d digits giving a length n, then n raw bytes
  (which may contain any byte, ``\\n`` and ``;`` included).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_MESSAGE = 1 << 20
"""Bytes a message may reach before the reader declares an input buffer overrun."""

SEPARATOR = b";:"
"""What a host puts between the commands of one message: ``;``, and a ``:`` that starts the next
header from the root, as SCPI reads a compound message (``INP:CLE;:SOUR:ENAB ON``)."""

# SCPI error numbers (SCPI-99 vol. 2, chapter 21) and IEEE 488.2 ones used by Photonica.
NO_ERROR = 0
COMMAND_ERROR = -100
INVALID_CHARACTER = -101
SYNTAX_ERROR = -102
INVALID_SEPARATOR = -103
DATA_TYPE_ERROR = -104
PARAMETER_NOT_ALLOWED = -108
MISSING_PARAMETER = -109
UNDEFINED_HEADER = -113
NUMERIC_DATA_ERROR = -120
BLOCK_DATA_ERROR = -160
INVALID_BLOCK_DATA = -161
EXECUTION_ERROR = -200
SETTINGS_CONFLICT = -221
DATA_OUT_OF_RANGE = -222
TOO_MUCH_DATA = -223
ILLEGAL_PARAMETER_VALUE = -224
DATA_STALE = -230
HARDWARE_ERROR = -240
DEVICE_ERROR = -300
QUEUE_OVERFLOW = -350
INPUT_BUFFER_OVERRUN = -363
QUERY_INTERRUPTED = -410
QUERY_UNTERMINATED = -420

ERROR_TEXT: dict[int, str] = {
    NO_ERROR: "No error",
    COMMAND_ERROR: "Command error",
    INVALID_CHARACTER: "Invalid character",
    SYNTAX_ERROR: "Syntax error",
    INVALID_SEPARATOR: "Invalid separator",
    DATA_TYPE_ERROR: "Data type error",
    PARAMETER_NOT_ALLOWED: "Parameter not allowed",
    MISSING_PARAMETER: "Missing parameter",
    UNDEFINED_HEADER: "Undefined header",
    NUMERIC_DATA_ERROR: "Numeric data error",
    BLOCK_DATA_ERROR: "Block data error",
    INVALID_BLOCK_DATA: "Invalid block data",
    EXECUTION_ERROR: "Execution error",
    SETTINGS_CONFLICT: "Settings conflict",
    DATA_OUT_OF_RANGE: "Data out of range",
    TOO_MUCH_DATA: "Too much data",
    ILLEGAL_PARAMETER_VALUE: "Illegal parameter value",
    DATA_STALE: "Data corrupt or stale",
    HARDWARE_ERROR: "Hardware error",
    DEVICE_ERROR: "Device-specific error",
    QUEUE_OVERFLOW: "Queue overflow",
    INPUT_BUFFER_OVERRUN: "Input buffer overrun",
    QUERY_INTERRUPTED: "Query INTERRUPTED",
    QUERY_UNTERMINATED: "Query UNTERMINATED",
}


class ScpiError(Exception):
    """A command that cannot be carried out: an SCPI error number and its text.

    ``str()`` gives the error-queue form, ``-222,"Data out of range; heater 3: 9.5 V > 7 V"``.
    """

    def __init__(self, code: int, detail: str = "", *, base: str | None = None) -> None:
        self.code = code
        self.detail = detail
        self.base = base or ERROR_TEXT.get(code, "Device-specific error" if code > 0 else "Error")
        super().__init__(self.entry())

    @property
    def text(self) -> str:
        return f"{self.base}; {self.detail}" if self.detail else self.base

    def entry(self) -> str:
        """The error as ``SYST:ERR?`` reports it: printable ASCII on one line, no double quote inside.

        Text taken from what a client sent may hold any byte; a newline left in
        it would split the reply in two and desynchronise the client.
        """
        return f'{self.code},"{self.text.translate(_ENTRY_TEXT)}"'


class _EntryText(dict[int, str]):
    """``str.translate`` table: printable ASCII stays, '"' becomes "'", anything else an escape (``\\n``, ``\\xd7``)."""

    def __missing__(self, code: int) -> str:
        if code == 0x22:
            value = "'"
        elif 0x20 <= code < 0x7F:
            value = chr(code)
        else:
            value = chr(code).encode("unicode_escape").decode("ascii")
        self[code] = value
        return value


_ENTRY_TEXT = _EntryText()


_ERROR_ENTRY = re.compile(r'^\s*([+-]?\d+)\s*,\s*"(.*)"\s*$', re.DOTALL)


def parse_error_entry(reply: str) -> tuple[int, str]:
    """``-222,"Data out of range"`` -> (-222, "Data out of range")."""
    m = _ERROR_ENTRY.match(reply)
    if not m:
        raise ScpiError(DATA_TYPE_ERROR, f"not an error-queue entry: {reply!r}")
    return int(m.group(1)), m.group(2)


# --- framing ---------------------------------------------------------------------------------

_SPECIAL = re.compile(rb"[\n#\"']")


@dataclass
class Overrun:
    """A message longer than the limit was discarded (up to its newline)."""

    size: int


@dataclass
class Framer:
    """Splits a byte stream into messages at newlines outside blocks.

    ``feed(data)`` returns the complete messages (without their terminator)
    and `Overrun` markers for messages that grew past ``limit`` bytes, which
    are discarded up to their end. A message being discarded is still read
    as a message (its blocks are skipped by their length), so a newline inside
    a block never ends it: however the bytes arrive, the same messages come
    out. Incomplete data waits for the next feed.
    """

    limit: int = MAX_MESSAGE
    _buffer: bytearray = field(default_factory=bytearray)
    _scan: int = 0
    _quote: int = 0
    _block_left: int = 0
    _block_end: int = 0
    _discarding: bool = False

    def feed(self, data: bytes) -> list[bytes | Overrun]:
        out: list[bytes | Overrun] = []
        buf = self._buffer
        buf.extend(data)
        i = self._scan
        while i < len(buf):
            if self._block_left:
                take = min(self._block_left, len(buf) - i)
                i += take
                self._block_left -= take
                self._block_end = i
                continue
            if not self._quote:
                # Jump to the next byte that matters: a newline, a block's '#', a quote.
                found = _SPECIAL.search(buf, i)
                if found is None:
                    i = len(buf)
                    break
                i = found.start()
            byte = buf[i]
            if self._quote and byte != 0x0A:  # a newline ends the message even in a string
                if byte == self._quote:
                    self._quote = 0
                i += 1
                continue
            if byte in (0x22, 0x27):  # " or '
                self._quote = byte
                i += 1
                continue
            if byte == 0x23 and i + 1 == len(buf):
                break  # a block may start here: wait for the next byte
            if byte == 0x23 and 0x31 <= buf[i + 1] <= 0x39:  # '#' and a digit 1-9
                digits = buf[i + 1] - 0x30
                length_field = bytes(buf[i + 2 : i + 2 + digits])
                if length_field.isdigit() or not length_field:
                    if len(length_field) < digits:
                        break  # the rest of the length field has not arrived yet
                    self._block_left = int(length_field)
                    i += 2 + digits
                    continue
                i += 1  # not a block: a byte of the length field is not a digit
                continue
            if byte == 0x0A:
                self._quote = 0
                if self._discarding:
                    self._discarding = False  # reported when it outgrew the limit
                else:
                    message = bytes(buf[:i])
                    if message.endswith(b"\r") and i - 1 >= self._block_end:  # not a block's last byte
                        message = message[:-1]
                    out.append(message if len(message) <= self.limit else Overrun(len(message)))
                del buf[: i + 1]
                i = 0
                self._block_end = 0
                continue
            i += 1
        if i > self.limit and not self._discarding:
            # What has been read is one incomplete message (bytes beyond a '#'
            # waiting for its length field may belong to the next one).
            out.append(Overrun(i))
            self._discarding = True
        if self._discarding:
            del buf[:i]  # drop what has been read; an unread '#' and its length field stay
            i = 0
            self._block_end = 0
        self._scan = i
        return out

    def pending(self) -> int:
        """Bytes held for an incomplete message."""
        return len(self._buffer)


# --- blocks ----------------------------------------------------------------------------------


def block(data: bytes) -> bytes:
    """``data`` as an IEEE 488.2 definite-length block."""
    length = str(len(data)).encode()
    if len(length) > 9:
        raise ScpiError(TOO_MUCH_DATA, f"a block holds at most 999,999,999 bytes, not {len(data)}")
    return b"#" + str(len(length)).encode() + length + data


def unblock(data: bytes) -> bytes:
    """The payload of a reply that is exactly one definite-length block.

    Raises:
        ScpiError: it is not a well-formed block (INVALID_BLOCK_DATA).
    """
    if len(data) < 2 or data[0:1] != b"#" or not 0x31 <= data[1] <= 0x39:
        raise ScpiError(INVALID_BLOCK_DATA, f"expected a block starting '#1'-'#9', got {data[:12]!r}")
    digits = data[1] - 0x30
    header = data[2 : 2 + digits]
    if len(header) != digits or not header.isdigit():
        raise ScpiError(INVALID_BLOCK_DATA, f"block length field {header!r} is not {digits} digits")
    length = int(header)
    payload = data[2 + digits :]
    if len(payload) != length:
        raise ScpiError(INVALID_BLOCK_DATA, f"block says {length} bytes, holds {len(payload)}")
    return payload


# --- commands --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    """One command of a message.

    Attributes:
        header: As sent, without a leading ':' or the '?' (``HEAT:VOLT``).
        query: Whether it ended in '?'.
        params: Each parameter as text (stripped; strings keep their quotes)
            or, for a block, its payload bytes.
    """

    header: str
    query: bool
    params: tuple[str | bytes, ...]


_HEADER = re.compile(rb"^:?(\*[A-Za-z]+|[A-Za-z][A-Za-z0-9]*(?::[A-Za-z][A-Za-z0-9]*)*)(\?)?")


def _split_units(message: bytes, separator: int) -> list[bytes]:
    """Split at ``separator`` outside strings and blocks; each part without its trailing blanks.

    A blank that is a block's last byte is data, not a blank: only what
    follows the last block of a part is trimmed.
    """
    parts: list[bytes] = []
    start = i = kept = 0
    quote = 0
    n = len(message)

    def part(end: int) -> bytes:
        stop = end
        while stop > max(start, kept) and message[stop - 1] in (0x20, 0x09):
            stop -= 1
        return message[start:stop]

    while i < n:
        byte = message[i]
        if quote:
            if byte == quote:
                quote = 0
            i += 1
            continue
        if byte in (0x22, 0x27):
            quote = byte
        elif byte == 0x23 and i + 1 < n and 0x31 <= message[i + 1] <= 0x39:
            digits = message[i + 1] - 0x30
            field_ = message[i + 2 : i + 2 + digits]
            if len(field_) == digits and field_.isdigit():
                i += 2 + digits + int(field_)
                kept = min(i, n)
                continue
        elif byte == separator:
            parts.append(part(i))
            start = i + 1
        i += 1
    if quote:
        raise ScpiError(SYNTAX_ERROR, "unterminated string")
    parts.append(part(n))
    return parts


def _param(raw: bytes) -> str | bytes:
    raw = raw.lstrip(b" \t")  # the end was trimmed by _split_units, which knows where blocks end
    if raw.startswith(b"#") and len(raw) > 1:
        if raw[1:2] == b"0":
            raise ScpiError(INVALID_BLOCK_DATA, "indefinite-length blocks (#0) are not supported")
        return unblock(raw)
    if not raw:
        raise ScpiError(MISSING_PARAMETER, "empty parameter")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ScpiError(INVALID_CHARACTER, f"non-ASCII byte in parameter {raw[:20]!r}") from None
    if any(ord(ch) < 0x20 for ch in text):
        raise ScpiError(INVALID_CHARACTER, f"control character in parameter {text[:20]!r}")
    return text


def parse_message(message: bytes) -> list[Parsed | ScpiError]:
    """The commands of one message, in order; a command that does not parse is an `ScpiError`."""
    result: list[Parsed | ScpiError] = []
    try:
        units = _split_units(message, 0x3B)  # ';'
    except ScpiError as exc:
        return [exc]
    for unit in units:
        unit = unit.lstrip(b" \t")
        if not unit:
            if len(units) > 1:
                result.append(ScpiError(SYNTAX_ERROR, "empty command between ';'"))
            continue
        m = _HEADER.match(unit)
        if m is None:
            shown = unit[:20].decode("ascii", "backslashreplace")
            code = (
                INVALID_CHARACTER if any(b > 0x7E or (b < 0x20 and b != 0x09) for b in unit[:20]) else UNDEFINED_HEADER
            )
            result.append(ScpiError(code, f"cannot read a header in '{shown}'"))
            continue
        header = m.group(1).decode("ascii")
        rest = unit[m.end() :]
        if rest and rest[:1] not in (b" ", b"\t"):
            shown = unit[: m.end() + 8].decode("ascii", "backslashreplace")
            result.append(ScpiError(INVALID_SEPARATOR, f"expected a space after the header in '{shown}'"))
            continue
        rest = rest.lstrip(b" \t")
        try:
            params = tuple(_param(p) for p in _split_units(rest, 0x2C)) if rest else ()  # ','
        except ScpiError as exc:
            result.append(exc)
            continue
        result.append(Parsed(header=header, query=m.group(2) is not None, params=params))
    return result


def header_matches(pattern: str, header: str) -> bool:
    """Whether ``header`` names the command ``pattern`` (``HEATer:VOLTage``).

    Each node matches its short form (the capitals) or its long form, in any
    case; a trailing numeric suffix of 1 is allowed (``OUTP1`` = ``OUTP``).
    """
    nodes = pattern.split(":")
    given = header.split(":")
    if len(nodes) != len(given):
        return False
    for node, word in zip(nodes, given, strict=True):
        short = "".join(ch for ch in node if ch.isupper() or ch in "*?")
        word = word.upper()
        if word.endswith("1") and not node.endswith("1"):
            word = word[:-1]
        if word not in (node.upper(), short.upper() if short else node.upper()):
            return False
    return True


def format_number(value: float | int) -> str:
    """A reply number: integers as NR1, others in NR3 with 12 significant digits."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return f"{value:.12E}"


def quote(text: str) -> str:
    """A string parameter, quoted, inner quotes doubled."""
    return '"' + text.replace('"', '""') + '"'


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        q = text[0]
        return text[1:-1].replace(q + q, q)
    raise ScpiError(DATA_TYPE_ERROR, f"expected a quoted string, got {text!r}")
