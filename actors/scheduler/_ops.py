"""What the compiler reads off an operation: its modes, the key naming them, where it sits, how to quote it."""

from __future__ import annotations

from typing import Any

from protocol.circuit import BeamSplitter, Input, Load, Measure, MziOp, Op, PhaseShift, Store, UnitaryOp


def modes_of(op: Op) -> list[int]:
    """The logical modes an op acts on (none for a wait or a conditional)."""
    if isinstance(op, Input | PhaseShift | Store | Load):
        return [op.mode]
    if isinstance(op, BeamSplitter | MziOp):
        return list(op.modes)
    if isinstance(op, UnitaryOp | Measure):
        return list(op.modes)
    return []


def modes_key(op: Op) -> str:
    """The key an op names its modes by: ``mode`` or ``modes``, whatever their number."""
    return "mode" if isinstance(op, Input | PhaseShift | Store | Load) else "modes"


def enclosing(path: str | int) -> str:
    """The path of the conditional a path inside it belongs to (``"7.ops.0"`` -> ``"7"``)."""
    return str(path).rsplit(".ops.", 1)[0]


def count_ops(raw: list[Any]) -> int:
    """Ops as sent, conditionals' bodies included, counted without building anything.

    One level of bodies: a conditional inside a conditional is refused unread.
    """
    count = len(raw)
    for op in raw:
        if type(op) is dict and type(op.get("op")) is str and op["op"] == "if":
            body = op.get("ops")
            if type(body) is list:
                count += len(body)
    return count


def few(items: Any, at_most: int = 8) -> str:
    """A client's list in a message: its first few, and how many more."""
    shown = sorted(items)[:at_most] if not isinstance(items, list) else items[:at_most]
    more = len(items) - len(shown)
    return f"{shown}" if not more else f"{str(shown)[:-1]}, ... ({more} more)]"


def power_of_two(bits: int) -> str:
    """2^bits in a message: written out while it is short."""
    return f"{2**bits:,}" if bits < 64 else f"2^{bits}"
