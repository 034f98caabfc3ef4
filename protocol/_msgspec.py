"""msgspec's validation messages, taken apart in one place.

msgspec says what is wrong and where in one string::

    Expected `int` >= 0 - at `$.modes[1]`
    Object missing required field `phi` - at `$.ops[0]`
    Object contains unknown field `angle`
    Expected `str` of length <= 2 - at `key` in `$.d`

`read_validation_error` splits such a string into its text, the path after
``$`` (``.modes[1]``), whether that path leads to a map's key rather than its
value, and the field a missing- or unknown-field message names. Sans-IO and
total: any string reads, the unrecognised parts as text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_AT = re.compile(r" - at `(?P<key>key` in `)?\$(?P<path>[^`]*)`$")
_NAMED = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>.*)`$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ValidationText:
    """One msgspec validation message, in parts.

    Attributes:
        text: The message without where it happened: ``Expected `int` >= 0``.
        path: Where, as msgspec writes it after ``$``: ``.modes[1]``, ``[0]``,
            ``""`` for the document itself; None if the message does not say.
        in_key: The path leads to a map's key (a key of the wrong type), not its value.
        field: The field a missing- or unknown-field message names, whole
            (backticks and all); None for other messages.
    """

    text: str
    path: str | None
    in_key: bool
    field: str | None

    def naming(self, quoted: str) -> str:
        """The text with the named field's name replaced by ``quoted`` (a clipped quote of it, say)."""
        if self.field is None:
            return self.text
        return self.text[: len(self.text) - len(self.field) - 1] + quoted + "`"


def read_validation_error(message: str) -> ValidationText:
    """``str(error)`` of a `msgspec.ValidationError` (or a `msgspec.DecodeError`), in parts."""
    at = _AT.search(message)
    text = message[: at.start()] if at else message
    named = _NAMED.match(text)
    return ValidationText(
        text=text,
        path=at.group("path") if at else None,
        in_key=bool(at and at.group("key")),
        field=named.group("name") if named else None,
    )
