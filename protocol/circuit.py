"""Circuits: what a physicist asks the chip to do, as JSON and as a Python builder.

A circuit names its logical modes ``0 .. modes-1`` and lists operations in
time order (docs/circuits.md has the format with examples)::

    {"modes": 2, "shots": 10000,
     "ops": [{"op": "input", "mode": 0, "state": "photon"},
             {"op": "input", "mode": 1, "state": "photon"},
             {"op": "bs", "modes": [0, 1], "theta": 0.7853981633974483},
             {"op": "measure", "modes": [0, 1], "into": "c"}]}

`parse_circuit` checks the format of every operation and returns every
problem at once (`CircuitProblem`: the op's index path, the field, the
message); checks against a device (modes, delay lines, feed-forward) are the
scheduler's. `CircuitBuilder` writes the same document from Python.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from ._errors import AwenError, ErrorCode
from ._message import FLOAT_MAX, Finite, NonNegative, Priority, Text, Timestamp
from ._msgspec import read_validation_error
from .mesh import mzi

# Every number has a range and every string a length, as everywhere in the protocol: integers
# fit 64 bits, floats are finite. The sizes a scheduler accepts (modes, ops, shots, ...) are its
# configured limits, checked by the compiler (docs/circuits.md, "Limits").
Mode = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")]
Angle = Finite
Size = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class _Op(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="op"):
    """Every op: frozen, strict about unknown fields, tagged by ``op``."""


class Input(_Op, frozen=True, kw_only=True, tag="input"):
    """What enters a mode at the start of a shot: one photon, coherent light, or vacuum."""

    mode: Mode
    state: Literal["photon", "coherent", "vacuum"] = "photon"
    power_w: NonNegative = 0.0
    phase: Angle = 0.0


class PhaseShift(_Op, frozen=True, kw_only=True, tag="ps"):
    """Multiply mode's amplitude by e^(i phi)."""

    mode: Mode
    phi: Angle


class BeamSplitter(_Op, frozen=True, kw_only=True, tag="bs"):
    """[[cos t, i e^(-i phi) sin t], [i e^(i phi) sin t, cos t]] on two modes; theta = pi/4 is 50:50."""

    modes: tuple[Mode, Mode]
    theta: Angle = math.pi / 4
    phi: Angle = 0.0


class MziOp(_Op, frozen=True, kw_only=True, tag="mzi"):
    """A Mach-Zehnder interferometer with the chip's convention (`protocol.mesh.mzi`)."""

    modes: tuple[Mode, Mode]
    theta: Angle
    phi: Angle = 0.0


class UnitaryOp(_Op, frozen=True, kw_only=True, tag="unitary"):
    """An arbitrary unitary on the listed modes: real parts ``re`` and imaginary parts ``im`` (default 0)."""

    modes: list[Mode]
    re: list[list[Finite]]
    im: list[list[Finite]] = msgspec.field(default_factory=list)

    def matrix(self) -> np.ndarray:
        re = np.asarray(self.re, dtype=np.float64)
        im = np.asarray(self.im, dtype=np.float64) if self.im else np.zeros_like(re)
        return re + 1j * im


class Store(_Op, frozen=True, kw_only=True, tag="store"):
    """Send the photon in ``mode`` into delay line ``line`` (a name the circuit chooses); the mode is then empty."""

    mode: Mode
    line: Name


class Load(_Op, frozen=True, kw_only=True, tag="load"):
    """Bring the photon held in delay line ``line`` back, into ``mode`` (an empty mode)."""

    line: Name
    mode: Mode


class Wait(_Op, frozen=True, kw_only=True, tag="wait"):
    """Let time pass (nanoseconds): what a stored photon spends in its delay line."""

    ns: Annotated[float, msgspec.Meta(gt=0, le=FLOAT_MAX)]


class Measure(_Op, frozen=True, kw_only=True, tag="measure"):
    """Detect ``modes``; their clicks, first mode most significant, form register ``into``."""

    modes: list[Mode]
    into: Name


class If(_Op, frozen=True, kw_only=True, tag="if"):
    """Run ``ops`` only in shots where register ``register`` reads ``equals`` (feed-forward)."""

    register: Name
    equals: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    ops: list[Any]


Op = Input | PhaseShift | BeamSplitter | MziOp | UnitaryOp | Store | Load | Wait | Measure | If
OP_NAMES = ("input", "ps", "bs", "mzi", "unitary", "store", "load", "wait", "measure", "if")


class RunMode(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a job's plan is run: once, over and over, or as a live stream.

    Attributes:
        mode: ``finite``: the shots once. ``cyclic``: the whole plan every
            ``period_s`` seconds, ``cycles`` times (none: until cancelled), as
            a drift reference does; every cycle's results are kept.
            ``continuous``: shot batches without end, publishing count rates
            (``exec.rates``) for live alignment at the bench, storing nothing,
            until the job is aborted or cancelled.
    """

    mode: Literal["finite", "cyclic", "continuous"] = "finite"
    period_s: NonNegative = 0.0
    cycles: Size | None = None


class _Figure(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="figure"):
    """A figure the circuit asks to be computed from its results (`protocol.analysis`), tagged by ``figure``."""

    name: Name | None = None
    """What the figure is reported as; the figure's kind when not given."""

    def label(self) -> str:
        return self.name if self.name is not None else str(type(self).__struct_config__.tag)


class HomVisibility(_Figure, frozen=True, kw_only=True, tag="hom_visibility"):
    """1 - 2 C(register) / C(reference): coincidences of two 2-mode registers, after and without the coupler."""

    register: Name
    reference: Name


class Fidelity(_Figure, frozen=True, kw_only=True, tag="fidelity"):
    """sum sqrt(p q) over the n-click patterns of ``register``, q the ideal (permanents) times detection."""

    register: Name


class Transmission(_Figure, frozen=True, kw_only=True, tag="transmission"):
    """The share of shots in which the 1-mode ``register`` clicks: a photon stored in delay ``line``, brought back."""

    register: Name
    line: Name


class Conditional(_Figure, frozen=True, kw_only=True, tag="conditional"):
    """P(``register`` clicks | ``given`` reads u), for every value u: registers read in the same shots."""

    register: Name
    given: Name


Figure = HomVisibility | Fidelity | Transmission | Conditional
FIGURE_NAMES = ("hom_visibility", "fidelity", "transmission", "conditional")


class Circuit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A job's program. ``ops`` holds the operations as sent (see `parse_circuit`).

    Attributes:
        modes: Logical modes the circuit uses (the scheduler places them on the chip).
        shots: Repetitions.
        priority: Higher runs first; equal priorities run in submission order.
        deadline: Unix time by which the job must have finished, if any.
        name: A label for people.
        run: Finite (default), cyclic or continuous (`RunMode`).
        analysis: Figures to compute from the results (`Figure`); not part of
            `circuit_hash`: figures never change a plan.
    """

    modes: Size
    shots: Size = 1000
    ops: list[Any] = msgspec.field(default_factory=list)
    priority: Priority = 0
    deadline: Timestamp | None = None
    name: Text = ""
    run: RunMode = msgspec.field(default_factory=RunMode)
    analysis: Annotated[list[Figure], msgspec.Meta(max_length=256)] = msgspec.field(default_factory=list)


class CircuitProblem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing wrong with a circuit: where (``op`` index path such as ``"4"`` or ``"7.ops.0"``), which key, why.

    ``field`` is a key of that op (or of the circuit's header when ``op`` is
    None) as docs/circuits.md names it: ``modes`` for a ``measure``, never
    ``mode``; a missing key is named too. None when no one key is at fault.
    """

    op: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"op {self.op}" if self.op is not None else "circuit"
        field = f" ({self.field})" if self.field else ""
        return f"{where}{field}: {self.message}"


class CircuitError(AwenError):
    """A circuit that cannot run; ``problems`` lists every reason."""

    code = ErrorCode.INVALID_CIRCUIT

    def __init__(self, problems: Sequence[CircuitProblem]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = f"the circuit has {count} problem{'s' if count != 1 else ''}: "
        super().__init__(head + "; ".join(str(p) for p in self.problems), field="ops")


_INDEX = re.compile(r"\[\d+\]")
_FINITE = re.compile(r"`float` [<>]=? -?1\.7976931348623157e\+308")
QUOTE_CHARS = 64
"""The most of a client's string (an unknown key, an op name) a problem quotes."""


def clip(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text``, or its start and how much more there was: a problem never repeats a client's megabyte."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


MAX_PROBLEMS = 100
"""Problems listed for one circuit unless configured otherwise; the rest are counted."""


class ProblemList(list[CircuitProblem]):
    """Problems in the order they are found: the first ``cap`` kept, the rest only counted.

    A circuit of a million bad ops is a million problems; the client needs the
    first ones and how many more there are, not a reply of hundreds of MB.
    """

    def __init__(self, cap: int = MAX_PROBLEMS) -> None:
        super().__init__()
        self.cap = cap
        self.more = 0

    def append(self, problem: CircuitProblem) -> None:
        if len(self) < self.cap:
            super().append(problem)
        else:
            self.more += 1

    @property
    def full(self) -> bool:
        return len(self) >= self.cap

    def report(self) -> list[CircuitProblem]:
        """The problems kept, and one saying how many more there were."""
        more = [CircuitProblem(op=None, field=None, message=f"{self.more} more problems are not listed")]
        return [*self, *(more if self.more else [])]


def number_text(value: int | float) -> str:
    """A number a client wrote, for a message: an int of thousands of digits as its order of magnitude."""
    if isinstance(value, int) and not -(10**30) < value < 10**30:
        return f"{'-' if value < 0 else ''}about 10^{round(math.log10(abs(value)))}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _validation_problem(op: str | None, error: msgspec.ValidationError) -> CircuitProblem:
    """A msgspec refusal as a problem whose ``field`` is a key the document has (or lacks).

    ``Expected `int` >= 0 - at `$.modes[1]``` is about the key ``modes``;
    ``Object missing required field `phi``` about ``phi``. Inside a circuit's
    header the key path keeps its dots (``run.cycles``); list indices go to the
    message.
    """
    text = str(error)
    parts = read_validation_error(text)
    path, message = "", text  # a key of the wrong type has no name to report: msgspec's words stay whole
    if not parts.in_key:
        path = parts.path.lstrip(".") if parts.path is not None else ""
        message = parts.text
        if parts.field is not None:
            name = clip(parts.field)
            message = parts.naming(name)
            path = f"{path}.{name}" if path else name
    message = _FINITE.sub("a finite number", message)
    key = _INDEX.sub("", path) or None
    if key is not None and op is not None:
        key = key.split(".", 1)[0]
    if path and path != key:
        message = f"{message} (at `{clip(path)}`)"
    return CircuitProblem(op=op, field=key, message=clip(message, 4 * QUOTE_CHARS))


_NESTED = (
    "conditional blocks cannot be nested: the device's feed-forward sets fast phase shifters once per shot, "
    "so a conditional holds phase shifts only"
)
_UNREADABLE = (ValueError, OverflowError)
"""What msgspec raises, instead of a ValidationError, for an int of thousands of digits."""


def _too_large(op: str | None, raw: dict[Any, Any]) -> CircuitProblem:
    """The problem for a number msgspec could not even read, at the key that holds it."""

    def huge(value: Any) -> bool:
        return type(value) is int and not -(2**63) <= value < 2**64

    key = next(
        (k for k, v in raw.items() if huge(v) or (type(v) is list and any(huge(x) for x in v))),
        None,
    )
    return CircuitProblem(
        op=op,
        field=key if isinstance(key, str) else None,
        message="a number too large to read: integers here fit in 64 bits",
    )


def _convert_op(raw: Any, path: str, problems: list[CircuitProblem], *, in_block: bool = False) -> Op | None:
    if not isinstance(raw, dict):
        problems.append(CircuitProblem(op=path, field=None, message=f"an op is an object, got {type(raw).__name__}"))
        return None
    kind = raw.get("op")
    if type(kind) is not str or kind not in OP_NAMES:  # compared only as a str: a numpy array compares elementwise
        known = ", ".join(OP_NAMES)
        what = repr(clip(kind)) if isinstance(kind, str) else f"of type {type(kind).__name__}"
        problems.append(CircuitProblem(op=path, field="op", message=f"unknown op {what} (known: {known})"))
        return None
    if in_block and kind == "if":  # refused before its body is looked at: nothing here recurses
        problems.append(CircuitProblem(op=path, field="op", message=_NESTED))
        return None
    try:
        op: Op = msgspec.convert(raw, Op)
    except msgspec.ValidationError as exc:
        problems.append(_validation_problem(path, exc))
        return None
    except _UNREADABLE:
        problems.append(_too_large(path, raw))
        return None
    if isinstance(op, If):
        inner = [_convert_op(o, f"{path}.ops.{i}", problems, in_block=True) for i, o in enumerate(op.ops)]
        return If(register=op.register, equals=op.equals, ops=inner)
    return op


_OPS = list[Op]
_BODIES = list[list[Op]]


def _convert_all(raw: list[Any], problems: list[CircuitProblem]) -> list[Op | None]:
    """The circuit's ops, typed, with conditionals' bodies one level deep (a nested conditional is refused).

    Nothing recurses: a conditional inside a conditional is refused before its
    own body is read, so a circuit nested a million levels deep costs what its
    first two levels cost.
    """
    if not all(type(item) is dict for item in raw):  # msgspec reads the tag of a non-dict as it can (numpy: IndexError)
        return [_convert_op(item, str(i), problems) for i, item in enumerate(raw)]
    try:  # one call for the whole list: per-op calls cost ~50x more (msgspec sets up the union each time)
        ops: list[Op | None] = list(msgspec.convert(raw, _OPS))
    except (msgspec.ValidationError, *_UNREADABLE):
        return [_convert_op(item, str(i), problems) for i, item in enumerate(raw)]
    blocks = [i for i, op in enumerate(ops) if type(op) is If]
    if not blocks:
        return ops
    raw_bodies: list[list[Any]] = [ops[i].ops for i in blocks]  # type: ignore[union-attr]
    typed: list[list[Op]] | None = None
    if all(type(item) is dict for body in raw_bodies for item in body):  # every conditional's body in one call
        try:
            typed = msgspec.convert(raw_bodies, _BODIES)
        except (msgspec.ValidationError, *_UNREADABLE):
            typed = None
    bodies: list[list[Op | None]] = (
        [[*body] for body in typed]
        if typed is not None
        else [
            [_convert_op(o, f"{i}.ops.{j}", problems, in_block=True) for j, o in enumerate(body)]
            for i, body in zip(blocks, raw_bodies, strict=True)
        ]
    )
    for i, body in zip(blocks, bodies, strict=True):
        block = ops[i]
        assert isinstance(block, If)
        for j, inner in enumerate(body):
            if type(inner) is If:
                problems.append(CircuitProblem(op=f"{i}.ops.{j}", field="op", message=_NESTED))
                body[j] = None
        ops[i] = If(register=block.register, equals=block.equals, ops=body)
    return ops


def parse_ops(
    circuit: Circuit, problems: list[CircuitProblem] | None = None
) -> tuple[list[Op | None], list[CircuitProblem]]:
    """Every op as its typed form (None where it is malformed), and every format problem.

    Problems are appended to ``problems`` if given (a `ProblemList` keeps a
    bounded number of them).
    """
    problems = ProblemList() if problems is None else problems
    ops = _convert_all(circuit.ops, problems)
    return ops, problems


def parse_circuit(data: Any) -> Circuit:
    """A circuit from a decoded JSON document; `CircuitError` with every format problem."""
    if type(data) is not dict:  # msgspec looks into other objects as it can (a numpy array: IndexError)
        message = f"a circuit is an object, got {type(data).__name__}"
        raise CircuitError([CircuitProblem(op=None, field=None, message=message)])
    if "run" in data and type(data["run"]) is not dict:  # the same, for the header's one object
        message = f"Expected `object`, got `{type(data['run']).__name__}`"
        raise CircuitError([CircuitProblem(op=None, field="run", message=message)])
    try:
        circuit = msgspec.convert(data, Circuit)
    except msgspec.ValidationError as exc:
        raise CircuitError([_validation_problem(None, exc)]) from None
    except _UNREADABLE:
        raise CircuitError([_too_large(None, data if isinstance(data, dict) else {})]) from None
    _, problems = parse_ops(circuit)
    if problems:
        raise CircuitError(problems)
    return circuit


def load_circuit(text: str | bytes) -> Circuit:
    """A circuit from JSON text."""
    try:
        data = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise CircuitError([CircuitProblem(op=None, field=None, message=f"not valid JSON: {exc}")]) from None
    except RecursionError:  # msgspec's decoder recurses per level of nesting
        message = "the JSON nests too deep to be read: an op is an object of numbers, strings and lists of them"
        raise CircuitError([CircuitProblem(op=None, field=None, message=message)]) from None
    return parse_circuit(data)


def walk(ops: Sequence[Op | None], prefix: str = "") -> Iterator[tuple[str, Op, If | None]]:
    """(index path, op, enclosing conditional) for every op, conditionals' bodies in place.

    With an explicit stack: however deep conditionals were nested, no recursion.
    """
    stack: list[tuple[Iterator[tuple[int, Op | None]], str, If | None]] = [(iter(enumerate(ops)), prefix, None)]
    while stack:
        items, at, block = stack[-1]
        for i, op in items:
            if op is None:
                continue
            path = f"{at}{i}"
            yield path, op, block
            if isinstance(op, If):
                stack.append((iter(enumerate(op.ops)), f"{path}.ops.", op))
                break
        else:
            stack.pop()


def flatten(ops: Sequence[Op | None]) -> list[tuple[str | int, Op, If | None]]:
    """`walk` as a list, built without a generator per op: the compiler's hot path.

    A top-level op's path is its index as an int (``str()`` gives the path);
    ops inside conditionals have string paths such as ``"7.ops.0"``.
    """
    flat: list[tuple[str | int, Op, If | None]] = []
    append = flat.append
    for i, op in enumerate(ops):
        if op is None:
            continue
        if type(op) is If:
            append((i, op, None))
            for inner_path, inner, _ in walk(op.ops, f"{i}.ops."):
                append((inner_path, inner, op))
        else:
            append((i, op, None))
    return flat


def compress_paths(paths: Sequence[str | int]) -> list[str]:
    """Op paths as a plan lists them: runs of consecutive top-level indices as ``"a-b"``."""
    out: list[str] = []
    start = end = -2
    for p in paths:
        if type(p) is int:
            if p == end + 1:
                end = p
                continue
            if start >= 0:
                out.append(f"{start}-{end}" if end > start else str(start))
            start = end = p
        else:
            if start >= 0:
                out.append(f"{start}-{end}" if end > start else str(start))
                start = end = -2
            out.append(str(p))
    if start >= 0:
        out.append(f"{start}-{end}" if end > start else str(start))
    return out


def expand_paths(paths: Sequence[str]) -> list[str]:
    """The op paths `compress_paths` wrote, one by one."""
    out: list[str] = []
    for p in paths:
        if "-" in p and ".ops." not in p:
            a, b = p.split("-")
            out.extend(str(i) for i in range(int(a), int(b) + 1))
        else:
            out.append(p)
    return out


def circuit_hash(circuit: Circuit) -> str:
    """A digest of what the circuit does (not its name, priority, deadline or analysis): equal circuits plan alike."""
    try:
        body = msgspec.msgpack.encode({"modes": circuit.modes, "shots": circuit.shots, "ops": circuit.ops})
    except RecursionError:  # only a circuit built in Python can get here: the wire's codec refuses deep frames
        message = "the ops nest too deep to be read: an op is an object of numbers, strings and lists of them"
        raise CircuitError([CircuitProblem(op=None, field="ops", message=message)]) from None
    except OverflowError:
        raise CircuitError([_too_large(None, {"modes": circuit.modes, "shots": circuit.shots})]) from None
    except TypeError as exc:  # a numpy array the codec decoded among the ops: no op holds one
        message = f"the ops hold a value JSON cannot write ({clip(str(exc))}): an op holds numbers, strings, lists"
        raise CircuitError([CircuitProblem(op=None, field="ops", message=message)]) from None
    return hashlib.blake2b(body, digest_size=16).hexdigest()


class CircuitBuilder:
    """Write a circuit from Python; `build` gives the same `Circuit` the JSON form parses to.

    ::

        c = (CircuitBuilder(2, shots=10_000)
             .input(0).input(1)
             .bs(0, 1)
             .measure([0, 1], "c")
             .build())
    """

    def __init__(
        self, modes: int, *, shots: int = 1000, priority: int = 0, deadline: float | None = None, name: str = ""
    ) -> None:
        self._header = {"modes": modes, "shots": shots, "priority": priority, "deadline": deadline, "name": name}
        self._ops: list[dict[str, Any]] = []
        self._stack: list[list[dict[str, Any]]] = [self._ops]
        self._analysis: list[dict[str, Any]] = []

    def figure(self, figure: str, register: str, *, name: str | None = None, **fields: str) -> CircuitBuilder:
        """Declare a figure (``analysis``): ``figure("transmission", "back", line="m")``."""
        entry = {"figure": figure, "register": register, **fields}
        self._analysis.append(entry if name is None else {**entry, "name": name})
        return self

    def _add(self, op: dict[str, Any]) -> CircuitBuilder:
        self._stack[-1].append(op)
        return self

    def input(self, mode: int, state: str = "photon", *, power_w: float = 0.0, phase: float = 0.0) -> CircuitBuilder:
        op: dict[str, Any] = {"op": "input", "mode": mode, "state": state}
        if power_w:
            op["power_w"] = float(power_w)
        if phase:
            op["phase"] = float(phase)
        return self._add(op)

    def ps(self, mode: int, phi: float) -> CircuitBuilder:
        return self._add({"op": "ps", "mode": int(mode), "phi": float(phi)})

    def bs(self, a: int, b: int, theta: float = math.pi / 4, phi: float = 0.0) -> CircuitBuilder:
        op: dict[str, Any] = {"op": "bs", "modes": [int(a), int(b)], "theta": float(theta)}
        if phi:
            op["phi"] = float(phi)
        return self._add(op)

    def mzi(self, a: int, b: int, theta: float, phi: float = 0.0) -> CircuitBuilder:
        return self._add({"op": "mzi", "modes": [int(a), int(b)], "theta": float(theta), "phi": float(phi)})

    def unitary(self, modes: Sequence[int], matrix: Any) -> CircuitBuilder:
        u = np.asarray(matrix, dtype=np.complex128)
        op: dict[str, Any] = {"op": "unitary", "modes": list(modes), "re": u.real.tolist()}
        if np.any(u.imag):
            op["im"] = u.imag.tolist()
        return self._add(op)

    def store(self, mode: int, line: str) -> CircuitBuilder:
        return self._add({"op": "store", "mode": mode, "line": line})

    def load(self, line: str, mode: int) -> CircuitBuilder:
        return self._add({"op": "load", "line": line, "mode": mode})

    def wait(self, ns: float) -> CircuitBuilder:
        return self._add({"op": "wait", "ns": float(ns)})

    def measure(self, modes: Sequence[int], into: str) -> CircuitBuilder:
        return self._add({"op": "measure", "modes": [int(q) for q in modes], "into": into})

    def if_(self, register: str, equals: int) -> CircuitBuilder:
        """Open a conditional block; ops until `end` go in it."""
        block: dict[str, Any] = {"op": "if", "register": register, "equals": equals, "ops": []}
        self._add(block)
        self._stack.append(block["ops"])
        return self

    def end(self) -> CircuitBuilder:
        if len(self._stack) == 1:
            raise ValueError("end() without an open if_()")
        self._stack.pop()
        return self

    def to_dict(self) -> dict[str, Any]:
        header = {k: v for k, v in self._header.items() if v is not None and v != ""}
        return {**header, "ops": self._ops, **({"analysis": self._analysis} if self._analysis else {})}

    def build(self) -> Circuit:
        if len(self._stack) != 1:
            raise ValueError("an if_() block is still open: close it with end()")
        return parse_circuit(self.to_dict())

    def to_json(self) -> bytes:
        return msgspec.json.encode(self.to_dict())


def gate_matrix(op: Op) -> np.ndarray:
    """A gate's matrix on its own modes (docs/circuits.md's convention); `TypeError` for an op that is no gate."""
    if isinstance(op, PhaseShift):
        return np.array([[complex(math.cos(op.phi), math.sin(op.phi))]])
    if isinstance(op, BeamSplitter):
        c, s = math.cos(op.theta), math.sin(op.theta)
        e = complex(math.cos(op.phi), math.sin(op.phi))
        return np.array([[c, 1j * s / e], [1j * s * e, c]])
    if isinstance(op, MziOp):
        return mzi(op.theta, op.phi)
    if isinstance(op, UnitaryOp):
        return op.matrix()
    raise TypeError(f"{type(op).__name__} is not a gate")
