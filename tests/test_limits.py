"""Every field of every message has a documented range: what a client may send is bounded before it is read.

Numbers fit signed 64 bits (so that SQLite and numpy hold them), floats a
request carries are finite, and strings, byte strings, lists and maps a
request carries have a maximum length. msgspec enforces all of it while
decoding, so no handler ever sees a value outside these ranges.
"""

from __future__ import annotations

from typing import Any

import msgpack
import msgspec.inspect as mi
import pytest

from protocol import Codec, ErrorCode, InvalidMessage, Notice, Request
from protocol.catalog import CATALOG

codec = Codec(CATALOG)

ELSEWHERE = frozenset({"protocol.circuit", "protocol.photonica"})
"""Declarations whose sizes are kept elsewhere: a circuit's are the scheduler's configured limits
(docs/circuits.md, tests/test_circuit_limits.py); the device description is what a device says of itself."""

HEADER = {"v": 1, "id": 7, "from": "client", "to": "memory", "re": None, "ts": 1700000000.5}


def leaves(info: Any, path: str, skip: frozenset[str], seen: frozenset[Any] = frozenset()) -> list[tuple[str, Any]]:
    """Every typed leaf and container reachable in a type, with its dotted path."""
    found: list[tuple[str, Any]] = [(path, info)]
    if isinstance(info, mi.StructType):
        if info.cls in seen or info.cls.__module__ in skip:
            return []
        for f in info.fields:
            found += leaves(f.type, f"{path}.{f.encode_name}", skip, seen | {info.cls})
    elif isinstance(info, mi.UnionType):
        for t in info.types:
            found += leaves(t, path, skip, seen)
    elif isinstance(info, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        found += leaves(info.item_type, f"{path}[]", skip, seen)
    elif isinstance(info, mi.TupleType):
        for t in info.item_types:
            found += leaves(t, f"{path}[]", skip, seen)
    elif isinstance(info, mi.DictType):
        found += leaves(info.key_type, f"{path}{{key}}", skip, seen)
        found += leaves(info.value_type, f"{path}{{}}", skip, seen)
    return found


def fields_of(kinds: tuple[type, ...], skip: frozenset[str] = ELSEWHERE) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for cls in CATALOG:
        if issubclass(cls, kinds):
            found += leaves(mi.type_info(cls), cls.TYPE, skip)
    return found


def int_range(info: Any) -> tuple[int | None, int | None]:
    lo = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else None)
    hi = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else None)
    return lo, hi


def test_every_int_field_of_every_message_has_a_range_within_signed_64_bits():
    unbounded = []
    for path, info in fields_of((object,), skip=frozenset({"protocol.photonica"})):  # circuits too
        if isinstance(info, mi.IntType):
            lo, hi = int_range(info)
            if lo is None or hi is None or lo < -(2**63) or hi > 2**63 - 1:
                unbounded.append(path)
    assert unbounded == []


def test_every_float_a_request_carries_is_finite():
    unbounded = [
        path
        for path, info in fields_of((Request, Notice), skip=frozenset())  # circuits too
        if isinstance(info, mi.FloatType)
        and ((info.ge is None and info.gt is None) or (info.le is None and info.lt is None))
    ]
    assert unbounded == []


def test_every_string_list_and_map_a_request_carries_has_a_maximum_length():
    sized = (mi.StrType, mi.BytesType, mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType, mi.DictType)
    unbounded = [
        path for path, info in fields_of((Request, Notice)) if isinstance(info, sized) and info.max_length is None
    ]
    assert unbounded == []


def frame(msg_type: str, body: dict[str, Any]) -> bytes:
    return msgpack.packb({**HEADER, "type": msg_type, "body": body})


@pytest.mark.parametrize(
    ("msg_type", "body", "field"),
    [
        ("mem.get_calibration", {"device": "chip", "version": 2**63}, "body.version"),
        ("mem.get_calibration", {"device": "chip", "version": 2**64 - 1}, "body.version"),
        ("mem.query_events", {"after_seq": 2**63}, "body.after_seq"),
        ("mem.query_events", {"since": float("nan")}, "body.since"),
        ("mem.put_job", {"job": "j", "circuit": {"modes": 2}, "priority": 2**63}, "body.priority"),
        ("mem.put_job", {"job": "j", "circuit": {"modes": 2}, "shots": 2**63}, "body.shots"),
        ("mem.commit_frame", {"job": "j", "frame": 2**63}, "body.frame"),
        (
            "mem.allocate",
            {"job": "j", "device": "d", "slots": [{"name": "s", "dtype": "bool", "shape": [2**31]}]},
            None,
        ),
        (
            "mem.allocate",
            {"job": "j", "device": "d", "slots": [{"name": "s", "dtype": "bool", "shape": [0, 2**30, 2**30, 2**30]}]},
            None,
        ),
        ("hal.run_shots", {"device": "chip", "shots": 2**31}, "body.shots"),
        ("hal.set_heaters", {"device": "chip", "changes": {0: float("nan")}}, None),
        ("hal.set_heaters", {"device": "chip", "changes": {2**40: 1.0}}, None),
        ("hal.get_heater", {"device": "chip", "heater": 2**63}, "body.heater"),
        ("sched.cancel", {"job": "j", "reason": "r" * 100_000}, "body.reason"),
        ("sched.next_job", {"executor": "e", "wait_s": float("inf")}, "body.wait_s"),
        ("sched.report_health", {"device": "d", "modes": list(range(100_000))}, "body.modes"),
        ("cal.calibrate", {"points": 2**63}, "body.points"),
        ("mem.export", {"job": "j", "path": "exports/a\x00b"}, "body.path"),
    ],
)
def test_values_past_a_fields_range_are_refused_as_invalid_before_any_handler(msg_type, body, field):
    with pytest.raises(InvalidMessage) as caught:
        codec.decode(frame(msg_type, body))
    assert caught.value.code == ErrorCode.INVALID
    if field is not None:
        assert caught.value.field == field
    else:
        assert caught.value.field.startswith("body.")


def plan_with_ops(ops: list[str]) -> dict[str, Any]:
    phase = {
        "index": 0,
        "round": 0,
        "ops": ops,
        "depends_on": [],
        "mesh_phases": [],
        "inputs": [],
        "delay_lines": [],
        "ff_modes": [],
        "branches": [],
        "registers": [],
        "placement": [],
        "resources": {"modes": [], "detectors": [], "delay_lines": [], "ff_shifters": 0},
        "shots": 1,
        "width": 4,
        "settle_s": 0.0,
        "duration_s": 0.0,
        "deadlines": [],
    }
    metrics = {"total_duration_s": 0.0, "phases": 1, "ops": 1, "min_slack_ns": None, "compile_s": 0.0}
    return {
        "id": "p",
        "circuit": "c",
        "device": "chip",
        "identity": "sim",
        "calibration": None,
        "strategy": "static",
        "modes": 2,
        "phases": [phase],
        "metrics": {**metrics, "reconfigurations": 0},
    }


@pytest.mark.parametrize(
    ("ops", "ok"),
    [
        (["0", "1-3", "4.ops.0", "12.ops.3"], True),
        (["../../etc"], False),
        (["0-99999999999"], False),  # a run expanded by whoever reads the plan: a billion ops
        (["0-1048576"], False),
        (["5-2"], False),
        (["01"], False),
        (["1-2-3"], False),
    ],
)
def test_a_plans_op_paths_are_index_paths_and_their_runs_are_bounded(ops, ok):
    body = {"job": "j", "plan": plan_with_ops(ops)}
    if ok:
        assert codec.decode(frame("sched.submit_procedure", body)).body.plan.phases[0].ops == ops
    else:
        with pytest.raises(InvalidMessage, match=r"body\.plan\.phases"):
            codec.decode(frame("sched.submit_procedure", body))
