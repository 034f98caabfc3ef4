"""The result layout (protocol.results): slot names made and read back, histograms, the journal."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.circuit import CircuitBuilder
from protocol.memory import SlotSpec, SlotValue
from protocol.results import (
    CYCLE_SLOT,
    JOINT,
    JOURNAL_SLOTS,
    POWERS,
    Journal,
    ResultSlot,
    click_totals,
    joint_slot,
    parse_result_slot,
    powers_slot,
    procedure_plan_id,
    register_histogram,
    result_slot,
    result_slots,
    shot_values,
)
from sim import parse_config

REGISTER = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,40}", fullmatch=True)


@given(phase=st.integers(0, 2**31 - 1), register=REGISTER)
def test_a_result_slot_name_reads_back_as_its_phase_and_register(phase, register):
    assert parse_result_slot(result_slot(phase, register)) == ResultSlot(phase, register)
    assert ResultSlot(phase, register).name == result_slot(phase, register)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("p0.c", (0, "c", "register")),
        ("p12.a.b", (12, "a.b", "register")),
        (joint_slot(3), (3, JOINT, "joint")),
        (powers_slot(7), (7, POWERS, "powers")),
        (*JOURNAL_SLOTS[:1], None),
        (JOURNAL_SLOTS[1], None),
        (JOURNAL_SLOTS[2], None),
        (CYCLE_SLOT, None),
        ("p.c", None),
        ("p01.c", None),
        ("px.c", None),
        ("p3", None),
        ("p3.", None),
    ],
)
def test_slot_names_parse_to_what_they_hold(name, expected):
    slot = parse_result_slot(name)
    if expected is None:
        assert slot is None
    else:
        assert slot is not None
        assert (slot.phase, slot.register, slot.kind) == expected


def test_a_histogram_counts_register_values_first_column_most_significant():
    patterns = np.array([[1, 0, 0], [0, 0, 2], [1, 0, 1], [1, 0, 1], [0, 0, 0]], dtype=np.uint8)
    counts = register_histogram(patterns, [0, 2])
    assert counts.dtype == np.int64
    assert counts.tolist() == [1, 1, 1, 2]  # 00, 01, 10, 11
    assert register_histogram(patterns, [2, 0]).tolist() == [1, 1, 1, 2]  # 01 and 10 swap
    assert register_histogram(patterns[:0], [1]).tolist() == [0, 0]


def test_counts_per_distinct_pattern_give_the_histogram_of_every_shot():
    # What hal.shots carries: each pattern once, and how many shots read it (two distinct rows may
    # still read the same register value: [0, 0, 2] and [0, 1, 2] are both 01 on columns 0 and 2).
    distinct = np.array([[1, 0, 0], [0, 0, 2], [0, 1, 2], [1, 0, 1], [0, 0, 0]], dtype=np.uint8)
    counts = np.array([3, 1, 4, 2, 7])
    every_shot = np.repeat(distinct, counts, axis=0)
    for columns in ([0, 2], [2, 0], [1], [0, 1, 2]):
        histogram = register_histogram(distinct, columns, counts)
        assert histogram.dtype == np.int64
        assert histogram.tolist() == register_histogram(every_shot, columns).tolist()
    assert register_histogram(distinct, [0, 2], counts).tolist() == [7, 5, 3, 2]
    assert click_totals(distinct, counts).tolist() == [5, 4, 7] == click_totals(every_shot).tolist()


def test_the_layout_of_a_job_names_every_register_the_joint_histogram_and_the_cycle():
    from actors.scheduler import compile_circuit

    circuit = CircuitBuilder(3, shots=100).input(0).input(1).bs(0, 1).measure([0], "a").measure([1, 2], "b").build()
    plan = compile_circuit(circuit, parse_config({"modes": 4}).description())
    slots = {s.name: s for s in result_slots(plan)}
    (phase,) = plan.phases
    p = phase.index
    assert slots[result_slot(p, "a")] == SlotSpec(name=result_slot(p, "a"), dtype="int64", shape=[2])
    assert slots[result_slot(p, "b")].shape == [4]
    assert slots[joint_slot(p)].shape == [8]
    assert CYCLE_SLOT not in slots
    assert CYCLE_SLOT in {s.name for s in result_slots(plan, cyclic=True)}
    patterns = np.zeros((5, phase.width), dtype=np.uint8)
    values = {v.slot: v.value for v in shot_values(phase, patterns)}
    assert set(values) == {result_slot(p, "a"), result_slot(p, "b"), joint_slot(p)}
    assert values[joint_slot(p)].tolist() == [5, 0, 0, 0, 0, 0, 0, 0]


def test_the_journal_is_written_and_read_back_as_the_state_buffer_holds_it():
    journal = Journal(phase=2, shots=4000, cycle=1)
    assert [s.name for s in Journal.slots()] == list(JOURNAL_SLOTS)
    assert journal.values() == [
        SlotValue(slot="journal.phase", value=2),
        SlotValue(slot="journal.shots", value=4000),
        SlotValue(slot="journal.cycle", value=1),
    ]
    stored = {v.slot: np.int64(v.value) for v in journal.values()}
    assert Journal.read(stored) == journal
    assert Journal() == Journal(0, 0, 0)


def test_a_procedure_plan_is_named_after_its_job():
    assert procedure_plan_id("cal-20261122-101010-ab12") == "procedure-cal-20261122-101010-ab12"
