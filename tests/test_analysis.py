"""Declared figures (``analysis``): checked at submit, computed from the plan's placement (`protocol.analysis`)."""

from __future__ import annotations

import json
import math

import msgspec
import numpy as np
import pytest

from actors.scheduler import compile_circuit
from protocol import analysis
from protocol.circuit import (
    CircuitBuilder,
    CircuitError,
    UnitaryOp,
    circuit_hash,
    load_circuit,
    parse_circuit,
    parse_ops,
)
from protocol.results import joint_slot, result_slot
from sim import output_distribution

from .chips import DEVICE
from .helpers import REPO


def example(name: str) -> dict:
    return json.loads((REPO / "examples" / f"{name}.json").read_text())


def refused(data: dict) -> list[tuple[str | None, str | None, str]]:
    with pytest.raises(CircuitError) as caught:
        compile_circuit(parse_circuit(data), DEVICE)
    return [(p.op, p.field, p.message) for p in caught.value.problems]


def test_figures_are_outside_the_circuit_hash():
    data = example("hom")
    bare = parse_circuit({k: v for k, v in data.items() if k != "analysis"})
    assert circuit_hash(parse_circuit(data)) == circuit_hash(bare)
    assert compile_circuit(parse_circuit(data), DEVICE).id == compile_circuit(bare, DEVICE).id


def test_boson_sampling_fidelity_uses_the_placed_detectors():
    """The compiler places the photons' modes apart (columns 0 4 1 5 ...): efficiencies go by column."""
    circuit = parse_circuit(example("boson_sampling"))
    plan = compile_circuit(circuit, DEVICE)
    (phase,) = plan.phases
    (read,) = phase.registers
    assert read.columns != sorted(read.columns)  # a permuting placement
    eff = np.array([0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.5])
    ops, _ = parse_ops(circuit)
    unitary = next(op for op in ops if isinstance(op, UnitaryOp)).matrix()
    ideal = output_distribution(unitary, [1, 0, 1, 0, 1, 0, 1, 0])
    counts = np.zeros(256, dtype=np.int64)
    for pattern, p in ideal.items():  # what a chip with these detectors, placed so, would count
        if max(pattern) == 1:
            value = int("".join(map(str, pattern)), 2)
            detect = np.prod([eff[read.columns[j]] for j, x in enumerate(pattern) if x])
            counts[value] = round(1e9 * p * detect)
    slots = {result_slot(phase.index, "c"): counts}
    figure = analysis.figures(circuit, plan, slots, efficiency=eff)["fidelity"]
    assert figure["value"] == pytest.approx(1.0, abs=1e-6)
    assert figure["photons"] == 4
    assert 0 < figure["sigma"] < 1e-3
    logical = msgspec.structs.replace(read, columns=sorted(read.columns))  # the old bug: logical order
    wrong = msgspec.structs.replace(plan, phases=[msgspec.structs.replace(phase, registers=[logical])])
    assert analysis.figures(circuit, wrong, slots, efficiency=eff)["fidelity"]["value"] < 0.995


def test_permanent_agrees_with_the_simulator():
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)) + 1j * rng.normal(size=(5, 5)))
    ideal = output_distribution(q, [1, 1, 0, 1, 0])
    for pattern, p in ideal.items():
        if max(pattern) == 1:
            rows = [i for i, x in enumerate(pattern) if x]
            assert abs(analysis.permanent(q[np.ix_(rows, [0, 1, 3])])) ** 2 == pytest.approx(p, abs=1e-12)


def test_hom_visibility_from_the_registers_counts():
    circuit = parse_circuit(example("hom"))
    plan = compile_circuit(circuit, DEVICE)
    slots = {}
    for phase in plan.phases:
        for read in phase.registers:
            slots[result_slot(phase.index, read.name)] = np.array([0, 0, 0, 100 if read.name == "hom" else 1000])
    figure = analysis.figures(circuit, plan, slots)["visibility"]
    assert figure["figure"] == "hom_visibility"
    assert figure["value"] == pytest.approx(0.8)
    assert figure["sigma"] > 0


def test_transmission_uses_the_declared_lines_rounds_only():
    """Two photons wait in two lines: 800 ns in ``m`` (32 rounds), 500 ns in ``n`` (20); the waits sum to 800."""
    circuit = (
        CircuitBuilder(2, shots=100)
        .input(0)
        .input(1)
        .store(0, "m")
        .wait(300)
        .store(1, "n")
        .wait(500)
        .load("m", 0)
        .load("n", 1)
        .measure([0], "a")
        .measure([1], "b")
        .figure("transmission", "b", line="n")
        .build()
    )
    plan = compile_circuit(circuit, DEVICE)
    (phase,) = plan.phases
    slots = {result_slot(phase.index, "b"): np.array([75, 25]), result_slot(phase.index, "a"): np.array([90, 10])}
    figure = analysis.figures(circuit, plan, slots)["transmission"]
    assert figure["rounds"] == 20
    assert figure["value"] == pytest.approx(0.25)
    assert figure["sigma"] == pytest.approx(math.sqrt(0.25 * 0.75 / 100))


def test_conditional_reads_the_joint_counts_given_first():
    circuit = parse_circuit(example("feed_forward"))
    plan = compile_circuit(circuit, DEVICE)
    (phase,) = plan.phases
    assert [r.name for r in phase.registers] == ["a", "b"]
    joint = np.array([60, 40, 100, 0])  # a b: 00, 01, 10, 11
    figure = analysis.figures(circuit, plan, {joint_slot(phase.index): joint})["conditional"]
    assert figure["value"] == [pytest.approx(0.4), 0.0]
    assert figure["shots"] == [100, 100]
    assert figure["sigma"][0] == pytest.approx(math.sqrt(0.24 / 100))


def test_a_misshapen_hom_declaration_is_refused_at_submit():
    data = example("hom")
    data["modes"] = 3  # named hom, shaped otherwise: the HOM register reads three modes
    data["ops"][3]["modes"] = [0, 1, 2]
    data["ops"].insert(0, {"op": "input", "mode": 2})
    problems = refused(data)
    assert [p[:2] for p in problems] == [("analysis.0", "register")]
    assert "2-mode register" in problems[0][2]


@pytest.mark.parametrize(
    ("figure", "field", "text"),
    [
        ({"figure": "fidelity", "register": "nope"}, "register", "no op measures into register 'nope'"),
        ({"figure": "fidelity", "register": "back"}, "register", "photons through a unitary"),
        ({"figure": "transmission", "register": "back", "line": "x"}, "line", "delay line 'x'"),
        ({"figure": "hom_visibility", "register": "back", "reference": "back"}, "register", "2-mode register"),
        ({"figure": "conditional", "register": "back", "given": "back"}, "given", "not another register"),
        ({"figure": "conditional", "register": "back", "given": "x"}, "given", "no op measures into register 'x'"),
        ({"figure": "transmission", "register": "back", "line": "m"}, "name", "a second figure named 'transmission'"),
    ],
)
def test_every_misdeclared_figure_names_its_entry(figure, field, text):
    data = example("delay_line")
    data["analysis"] = [{"figure": "transmission", "register": "back", "line": "m"}, figure]
    problems = refused(data)
    assert any(p[:2] == ("analysis.1", field) and text in p[2] for p in problems), problems
    assert all(p[0] == "analysis.1" for p in problems)


def test_an_unknown_figure_is_a_format_problem():
    data = example("hom")
    data["analysis"] = [{"figure": "beauty", "register": "hom"}]
    with pytest.raises(CircuitError):
        load_circuit(json.dumps(data))
