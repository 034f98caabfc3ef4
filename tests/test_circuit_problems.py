"""Every kind of problem a circuit can have names the op it is about and a key that op really has.

A client reads ``op`` and ``field`` to find what to change: a problem about a
measurement's modes must say ``modes`` (the key a ``measure`` has), never
``mode``; one about a conditional's timing must point at the ``if`` and its
``register``, not at the phase shift inside. The table below has a row for
each problem the parser, the analysis and the fit check can report.
"""

from __future__ import annotations

from typing import Any, get_args

import msgspec
import numpy as np
import pytest

from actors.scheduler import Health, Limits, compile_circuit
from protocol.circuit import Circuit, CircuitError, CircuitProblem, Op, RunMode, parse_circuit
from protocol.photonica import FeedForwardSpec, SourceSpec
from sim import parse_config

DEVICE = parse_config({"modes": 8}).description()
NO_PHOTONS = msgspec.structs.replace(DEVICE, sources=SourceSpec(single_photon=False, coherent_max_w=0.01))
ONE_SHIFTER = msgspec.structs.replace(DEVICE, feedforward=FeedForwardSpec(latency_s=2e-7, phase_shifters=1))

OP_FIELDS = {cls.__struct_config__.tag: set(cls.__struct_fields__) for cls in get_args(Op)}
CIRCUIT_FIELDS = set(Circuit.__struct_fields__) | {f"run.{f}" for f in RunMode.__struct_fields__}


def op_at(ops: list[Any], path: str) -> Any:
    """The op as sent at an index path such as ``"4"`` or ``"7.ops.0"``."""
    first, *inner = path.split(".ops.")
    op = ops[int(first)]
    for index in inner:
        op = op["ops"][int(index)]
    return op


def keys_of(op: Any) -> set[str]:
    """The keys a problem may name on ``op``: its type's fields and ``op``, and any key it was sent with."""
    if not isinstance(op, dict):
        return set()
    kind = op.get("op")
    declared = OP_FIELDS.get(kind, set()) if isinstance(kind, str) else set()
    return {"op"} | declared | {k for k in op if isinstance(k, str)}


def assert_names_real_keys(data: dict[str, Any], problems: list[CircuitProblem]) -> None:
    ops = data.get("ops", [])
    for p in problems:
        if p.op is None:
            assert p.field is None or p.field in CIRCUIT_FIELDS or p.field.split(".")[0] in data, p
        elif p.field is not None:
            assert p.field in keys_of(op_at(ops, p.op)), f"{p}: the op has {sorted(keys_of(op_at(ops, p.op)))}"


def problems_of(data: dict[str, Any], *, device=DEVICE, health: Health | None = None, **limits) -> list[CircuitProblem]:
    try:
        circuit = parse_circuit(data)
        compile_circuit(circuit, device, limits=Limits(**limits), health=health)
    except CircuitError as exc:
        return exc.problems
    raise AssertionError("the circuit was accepted")


def ff(register: str, equals: int, *body: dict) -> dict:
    return {"op": "if", "register": register, "equals": equals, "ops": list(body)}


def inp(q: int, **kw: Any) -> dict:
    return {"op": "input", "mode": q, **kw}


def ps(q: int, phi: float = 1.0) -> dict:
    return {"op": "ps", "mode": q, "phi": phi}


def bs(a: int, b: int) -> dict:
    return {"op": "bs", "modes": [a, b]}


def store(q: int, line: str) -> dict:
    return {"op": "store", "mode": q, "line": line}


def load(line: str, q: int) -> dict:
    return {"op": "load", "line": line, "mode": q}


def wait(ns: float) -> dict:
    return {"op": "wait", "ns": ns}


def measure(modes: list[int], into: str) -> dict:
    return {"op": "measure", "modes": modes, "into": into}


def unitary(modes: list[int], re: Any) -> dict:
    return {"op": "unitary", "modes": modes, "re": np.asarray(re, dtype=float).tolist()}


# A photon stored and brought back into mode 2 after a measurement, and one still in flight in mode 3.
STORED = [inp(0), inp(1), inp(3), bs(0, 1), store(1, "m"), measure([0], "a"), wait(300), load("m", 2)]

KINDS: list[tuple[str, dict[str, Any], dict[str, Any], tuple[str | None, str | None, str]]] = [
    # --- the format ---
    ("not an object", {"ops": ["measure"]}, {}, ("0", None, "an op is an object")),
    ("unknown op", {"ops": [{"op": "teleport", "mode": 0}]}, {}, ("0", "op", "unknown op 'teleport'")),
    ("mistyped", {"ops": [{"op": "bs", "modes": [0, 1], "theta": "wide"}]}, {}, ("0", "theta", "Expected `float`")),
    ("missing", {"ops": [{"op": "ps", "mode": 0}]}, {}, ("0", "phi", "missing required field `phi`")),
    ("unknown key", {"ops": [{"op": "ps", "mode": 0, "phi": 0, "angle": 1}]}, {}, ("0", "angle", "unknown field")),
    ("bad element", {"ops": [measure([0, -1], "c")]}, {}, ("0", "modes", "Expected `int` >= 0")),
    ("in a body", {"ops": [measure([0], "c"), ff("c", 1, ps(-1))]}, {}, ("1.ops.0", "mode", "Expected `int` >= 0")),
    ("header", {"ops": [], "shots": 0}, {}, (None, "shots", "Expected `int` >= 1")),
    ("run", {"ops": [], "run": {"mode": "cyclic", "cycles": 0}}, {}, (None, "run.cycles", ">= 1")),
    # --- the configured limits ---
    ("modes limit", {"modes": 3, "ops": []}, {"max_modes": 2}, (None, "modes", "more than the configured limit")),
    ("shots limit", {"shots": 50, "ops": []}, {"max_shots": 10}, (None, "shots", "more than the configured limit")),
    ("ops limit", {"ops": [inp(0), inp(1)]}, {"max_ops": 1}, (None, "ops", "more than the configured limit")),
    # --- modes ---
    ("range, one mode", {"ops": [ps(5)]}, {}, ("0", "mode", "mode 5 is out of range")),
    ("range, a measure of one", {"ops": [inp(0), measure([5], "c")]}, {}, ("1", "modes", "mode 5 is out of range")),
    ("range, a unitary on one", {"ops": [unitary([5], [[1]])]}, {}, ("0", "modes", "mode 5 is out of range")),
    ("repeated", {"ops": [bs(0, 0)]}, {}, ("0", "modes", "repeat")),
    # --- inputs ---
    ("input in flight", {"ops": [inp(0), inp(1), measure([0], "a"), inp(0)]}, {}, ("3", "mode", "new input while")),
    ("power", {"ops": [inp(0, state="coherent", power_w=1.0)]}, {}, ("0", "power_w", "coherent light")),
    ("no sources", {"ops": [inp(0)]}, {"device": NO_PHOTONS}, ("0", "state", "no single-photon sources")),
    # --- gates ---
    ("not unitary", {"ops": [unitary([0, 1], [[1, 1], [0, 1]])]}, {}, ("0", "re", "not unitary")),
    ("not square", {"ops": [unitary([0, 1], [[1, 0]])]}, {}, ("0", "re", "must be 2x2")),
    ("both passes", {"ops": [*STORED, bs(3, 2)]}, {}, ("8", "modes", "in the first pass and")),
    ("ps on an emptied mode", {"ops": [inp(0), store(0, "m"), ps(0), load("m", 1)]}, {}, ("2", "mode", "is empty")),
    ("unitary on a measured", {"ops": [inp(0), measure([0], "a"), unitary([0], [[1]])]}, {}, ("2", "modes", "was")),
    ("gate after the end", {"ops": [*STORED, measure([2], "b"), ps(2)]}, {}, ("9", "mode", "second pass")),
    # --- feed-forward ---
    ("not a ps", {"ops": [*STORED, ff("a", 1, bs(2, 3))]}, {}, ("8.ops.0", "op", "only phase shifts")),
    ("never written", {"ops": [ff("never", 1, ps(0))]}, {}, ("0", "register", "read before it is written")),
    (
        "earlier shot",
        {"ops": [inp(0), measure([0], "a"), inp(0), store(0, "m"), wait(300), load("m", 1), ff("a", 1, ps(1))]},
        {},
        ("6", "register", "earlier shot"),
    ),
    ("second pass", {"ops": [*STORED, measure([2], "b"), ff("b", 1, ps(0))]}, {}, ("9", "register", "second pass")),
    ("equals", {"ops": [*STORED, ff("a", 2, ps(2))]}, {}, ("8", "equals", "never reads 2")),
    ("no loaded photon", {"ops": [*STORED, ff("a", 1, ps(3))]}, {}, ("8.ops.0", "mode", "holds none")),
    ("acted on", {"ops": [*STORED, ps(2), ff("a", 1, ps(2))]}, {}, ("9.ops.0", "mode", "was acted on after")),
    (
        "too fast",
        {"ops": [*STORED[:6], wait(100), load("m", 2), ff("a", 1, ps(2))]},
        {},
        ("8", "register", "needs feed-forward within 100 ns"),
    ),
    # --- delay lines ---
    ("store of nothing", {"ops": [store(0, "m")]}, {}, ("0", "mode", "holds no photon")),
    ("line twice", {"ops": [inp(0), inp(1), store(0, "m"), store(1, "m")]}, {}, ("3", "line", "used twice at once")),
    ("empty line", {"ops": [load("m", 0)]}, {}, ("0", "line", "holds no photon here")),
    (
        "load into a detected",
        {"ops": [inp(0), inp(1), store(0, "m"), store(1, "n"), load("m", 2), measure([2], "b"), load("n", 2)]},
        {},
        ("6", "mode", "measured in the second pass"),
    ),
    ("load into a lit", {"ops": [inp(0), inp(1), store(0, "m"), load("m", 1)]}, {}, ("3", "mode", "is not empty")),
    ("too late", {"ops": [inp(0), store(0, "m"), wait(1400), load("m", 1)]}, {}, ("3", "line", "50 ns too late")),
    ("never loaded", {"ops": [inp(0), store(0, "m")]}, {}, ("1", "line", "never loaded")),
    # --- measurements ---
    ("measure an emptied", {"ops": [inp(0), store(0, "m"), measure([0], "c")]}, {}, ("2", "modes", "is empty")),
    ("measure both passes", {"ops": [*STORED, measure([3, 2], "b")]}, {}, ("8", "modes", "within one pass")),
    ("written twice", {"ops": [inp(0), inp(1), measure([0], "c"), measure([1], "c")]}, {}, ("3", "into", "twice")),
    # --- what one shot needs of the device ---
    (
        "physical modes",
        {"modes": 9, "ops": [*(inp(q) for q in range(9)), *(bs(q, q + 1) for q in range(8))]},
        {},
        ("8", "mode", "need 9 physical modes in one shot"),
    ),
    (
        "delay lines",
        {
            "modes": 6,
            "ops": [
                *(x for q in range(3) for x in (inp(q), store(q, f"s{q}"))),
                *(load(f"s{q}", 3 + q) for q in range(3)),
                unitary([3, 4, 5], np.eye(3)),
                measure([3, 4, 5], "c"),
            ],
        },
        {},
        ("8", "line", "hold 3 photons in delay lines at once"),
    ),
    (
        "fast shifters",
        {
            "modes": 5,
            "ops": [
                *(inp(0), inp(1), inp(2), store(1, "m"), store(2, "n"), measure([0], "a"), wait(300)),
                *(load("m", 3), load("n", 4), ff("a", 1, ps(3)), ff("a", 1, ps(4)), bs(3, 4), measure([3, 4], "b")),
            ],
        },
        {"device": ONE_SHIFTER},
        ("10.ops.0", "mode", "fast phase shifters"),
    ),
    (
        "feed-forward bits",
        {
            "modes": 4,
            "ops": [
                *(inp(0), inp(1), inp(2), store(2, "m"), measure([0, 1], "a"), wait(300), load("m", 3)),
                *(ff("a", 1, ps(3)), measure([3], "b")),
            ],
        },
        {"max_ff_bits": 1},
        ("7", "register", "feed-forward reads 2 register bits"),
    ),
    (
        "detectors",
        {"ops": [inp(0), inp(1), measure([0, 1], "c")]},
        {"health": Health(detectors=frozenset(range(7)))},
        ("2", "modes", "2 detections in one shot"),
    ),
]


@pytest.mark.parametrize(("header", "options", "expected"), [k[1:] for k in KINDS], ids=[k[0] for k in KINDS])
def test_every_problem_names_its_op_and_a_key_that_op_has(header, options, expected):
    data = {"modes": 4, **header}
    found = problems_of(data, **options)
    assert_names_real_keys(data, found)
    op, field, text = expected
    assert any((p.op, p.field) == (op, field) and text in p.message for p in found), [str(p) for p in found]
