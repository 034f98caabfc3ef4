"""Circuits to plans: validation that names every problem, plans that realise the circuit, invariants."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.scheduler import (
    Feedback,
    Health,
    Limits,
    analyse,
    apply_strategy,
    combined_health,
    compile_circuit,
    plan_problems,
    validate_plan,
)
from protocol.circuit import (
    Circuit,
    CircuitBuilder,
    CircuitError,
    If,
    Wait,
    load_circuit,
    parse_circuit,
    parse_ops,
    walk,
)
from protocol.mesh import mesh_unitary, mzi
from protocol.scheduler import StrategyConfig
from sim import output_distribution

from .chips import BIG, DEVICE
from .circuits import feed_forward, hom, two_rounds


def problems_of(circuit: Circuit, device=DEVICE, **limits) -> list[str]:
    with pytest.raises(CircuitError) as caught:
        compile_circuit(circuit, device, limits=Limits(**limits))
    return [str(p) for p in caught.value.problems]


def raw(ops: list, modes: int = 2, **header) -> Circuit:
    return msgspec.convert({"modes": modes, "ops": ops, **header}, Circuit)


# --- the format --------------------------------------------------------------------------------


def test_the_builder_writes_the_documented_json():
    text = b"""{"modes": 2, "shots": 10000, "ops": [
        {"op": "input", "mode": 0, "state": "photon"},
        {"op": "input", "mode": 1, "state": "photon"},
        {"op": "bs", "modes": [0, 1], "theta": 0.7853981633974483},
        {"op": "measure", "modes": [0, 1], "into": "c"}]}"""
    builder = CircuitBuilder(2, shots=10_000).input(0).input(1).bs(0, 1).measure([0, 1], "c")
    built = builder.build()
    assert load_circuit(text) == built
    assert load_circuit(builder.to_json()) == built


def test_format_problems_are_all_reported_with_op_and_field():
    with pytest.raises(CircuitError) as caught:
        parse_circuit(
            {
                "modes": 2,
                "ops": [
                    {"op": "teleport", "mode": 0},
                    {"op": "ps", "mode": 0},
                    {"op": "bs", "modes": [0, 1], "theta": "wide"},
                    {"op": "if", "register": "c", "equals": 1, "ops": [{"op": "ps", "mode": -1, "phi": 0}]},
                    "measure",
                ],
            }
        )
    found = [(p.op, p.field) for p in caught.value.problems]
    assert found == [("0", "op"), ("1", "phi"), ("2", "theta"), ("3.ops.0", "mode"), ("4", None)]
    assert "unknown op 'teleport'" in str(caught.value)
    assert "missing required field `phi`" in str(caught.value)
    assert caught.value.code == "invalid-circuit"


# --- validation against the device --------------------------------------------------------------


def test_every_problem_against_the_device_is_reported_at_once():
    circuit = raw(
        [
            {"op": "input", "mode": 0},
            {"op": "bs", "modes": [0, 7]},
            {"op": "unitary", "modes": [0, 1], "re": [[1, 1], [0, 1]]},
            {"op": "if", "register": "never", "equals": 1, "ops": [{"op": "ps", "mode": 0, "phi": 1.0}]},
            {"op": "input", "mode": 1},
            {"op": "store", "mode": 0, "line": "a"},
            {"op": "store", "mode": 1, "line": "a"},
            {"op": "measure", "modes": [1], "into": "c"},
        ]
    )
    found = problems_of(circuit)
    assert found[0].startswith("op 1 (modes): mode 7 is out of range")
    assert "op 2 (re): the matrix is not unitary" in found[1]
    assert "op 3 (register): register 'never' is read before it is written" in found[2]
    assert any(
        "op 6 (line): delay line 'a' is used twice at once: it holds the photon stored at op 5" in p for p in found
    )
    assert any("op 5 (line): delay line 'a' is never loaded" in p for p in found)


def test_a_conditional_needing_faster_feed_forward_than_the_device_has_is_refused():
    first_pass = CircuitBuilder(3).input(0).input(1).bs(0, 1).store(1, "m").measure([0], "a")
    fast = feed_forward(first_pass, wait_ns=100).measure([2], "b").build()
    (problem,) = problems_of(fast)
    assert "needs feed-forward within 100 ns of the measurement" in problem
    assert "the device's feed-forward takes 200 ns: add a wait of at least 100 ns" in problem
    slow_enough = [*fast.ops[:5], {"op": "wait", "ns": 250}, *fast.ops[6:]]
    compile_circuit(msgspec.structs.replace(fast, ops=slow_enough), DEVICE)


def test_a_stored_photon_past_its_coherence_window_is_refused_naming_it_and_how_late():
    late = CircuitBuilder(2).input(0).store(0, "m").wait(1000).wait(400).load("m", 1).measure([1], "x").build()
    (problem,) = problems_of(late)
    assert "the photon stored in delay line 'm' at op 1 is loaded after 1400 ns" in problem
    assert "60 round trips) less a 10% safety margin (1350 ns): 50 ns too late" in problem
    compile_circuit(late, DEVICE, limits=Limits(coherence_margin=0.05))


def test_limits_and_device_size_are_enforced():
    found = problems_of(CircuitBuilder(3, shots=50).input(0).measure([0], "c").build(), max_shots=10, max_modes=2)
    assert found == [
        "circuit (modes): 3 modes is more than the configured limit of 2",
        "circuit (shots): 50 shots is more than the configured limit of 10",
    ]
    wide = CircuitBuilder(9).unitary(range(9), np.eye(9)).build()
    (problem,) = problems_of(wide)
    assert "op 0 (modes): a unitary on 9 modes: the device has 8, so no shot can hold it" in problem
    chain = CircuitBuilder(9)
    for q in range(9):
        chain.input(q)
    for q in range(8):
        chain.bs(q, q + 1)
    (problem,) = problems_of(chain.build())
    assert "need 9 physical modes in one shot" in problem
    assert "the device has 8 usable" in problem
    three = CircuitBuilder(6)
    for q in range(3):
        three.input(q).store(q, f"s{q}")
    for q in range(3):
        three.load(f"s{q}", 3 + q)
    three.unitary([3, 4, 5], np.eye(3)).measure([3, 4, 5], "c")
    assert any(
        "hold 3 photons in delay lines at once; the device has 2 usable" in p for p in problems_of(three.build())
    )


# --- where the photons are: store, load, and the modes they leave -------------------------------


def test_a_photon_comes_back_into_the_mode_it_left():
    """A store empties its mode (docs/circuits.md), so the mode may take the photon back in the second pass."""
    circuit = CircuitBuilder(1).input(0).store(0, "m").wait(100).load("m", 0).measure([0], "c").build()
    plan = compile_circuit(circuit, DEVICE)
    validate_plan(plan, DEVICE, circuit_ops=carried_ops(circuit))
    (phase,) = plan.phases
    where = {(p.logical, p.pass_): p.physical for p in phase.placement}
    (route,) = phase.delay_lines
    assert (route.out_mode, route.in_mode) == (where[(0, 1)], where[(0, 2)])
    (register,) = phase.registers
    assert (register.pass_, register.columns) == (2, [DEVICE.modes + where[(0, 2)]])


@pytest.mark.parametrize("first", ["a", "b"])
@pytest.mark.parametrize("targets", [{"a": 0, "b": 1}, {"a": 1, "b": 0}, {"a": 2, "b": 3}, {"a": 0, "b": 3}])
def test_two_stored_photons_come_back_in_either_order_into_any_empty_modes(first, targets):
    b = CircuitBuilder(4).input(0).input(1).bs(0, 1).store(0, "a").store(1, "b").wait(100)
    for line in (first, "b" if first == "a" else "a"):
        b.load(line, targets[line])
    circuit = b.measure([targets["a"], targets["b"]], "c").build()
    plan = compile_circuit(circuit, DEVICE)
    validate_plan(plan, DEVICE, circuit_ops=carried_ops(circuit))
    (phase,) = plan.phases
    where = {(p.logical, p.pass_): p.physical for p in phase.placement}
    routes = {d.line: (m.out_mode, m.in_mode) for d, m in zip(phase.deadlines, phase.delay_lines, strict=True)}
    assert routes == {s: (where[(q, 1)], where[(targets[s], 2)]) for s, q in (("a", 0), ("b", 1))}


def test_a_mode_whose_photon_is_in_a_delay_line_is_empty_whether_or_not_another_load_came_first():
    """Vacuum in the second pass: the mode's own photon waiting in a delay line does not occupy it."""
    for order in (["n", "m"], ["m", "n"]):
        b = CircuitBuilder(4).input(0).input(2).store(0, "m").store(2, "n").wait(100)
        for line in order:
            b.load(line, {"m": 3, "n": 1}[line])
            if line == "n":
                b.bs(0, 1)  # mode 0 is empty: its photon is in delay line m, or already back in mode 3
        circuit = b.measure([0, 1, 3], "c").build()
        validate_plan(compile_circuit(circuit, DEVICE), DEVICE, circuit_ops=carried_ops(circuit))


@st.composite
def delay_line_programs(draw: st.DrawFn) -> list[dict]:
    """Inputs, then stores, loads, waits, gates and measurements on random modes and delay lines (one shot).

    Few modes and lines; stores of lit modes into free lines, and loads of held lines into modes
    stores emptied, more often than not: photons come back into the modes they or others left.
    """
    modes = draw(st.integers(1, 3))
    lit = sorted(draw(st.sets(st.integers(0, modes - 1), min_size=1)))
    ops: list[dict] = [{"op": "input", "mode": q} for q in lit]
    held: list[str] = []
    emptied: list[int] = []
    usually = st.sampled_from([True, True, True, True, False])
    for step in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["store", "store", "load", "load", "load", "wait", "measure", "ps", "bs"]))
        q = draw(st.integers(0, modes - 1))
        free = [s for s in ("a", "b") if s not in held]
        if kind == "store":
            q = draw(st.sampled_from(lit)) if lit and draw(usually) else q
            line = draw(st.sampled_from(free)) if free and draw(usually) else draw(st.sampled_from(["a", "b"]))
            ops.append({"op": "store", "mode": q, "line": line})
            lit = [m for m in lit if m != q]
            emptied.append(q)
            held.append(line)
        elif kind == "load":
            line = draw(st.sampled_from(held)) if held and draw(usually) else draw(st.sampled_from(["a", "b"]))
            q = draw(st.sampled_from(emptied)) if emptied and draw(st.booleans()) else q
            ops.append({"op": "load", "line": line, "mode": q})
            held = [s for s in held if s != line]
        elif kind == "wait":
            ops.append({"op": "wait", "ns": draw(st.sampled_from([30.0, 250.0, 700.0]))})
        elif kind == "measure":
            ops.append({"op": "measure", "modes": [q], "into": f"r{step}"})
        elif kind == "ps":
            ops.append({"op": "ps", "mode": q, "phi": 0.5})
        elif modes > 1:
            ops.append({"op": "bs", "modes": [q, (q + draw(st.integers(1, modes - 1))) % modes]})
    return ops


def _touches(op: dict) -> set:
    keys = {("mode", q) for q in op.get("modes", [op.get("mode")]) if q is not None}
    if "line" in op:
        keys.add(("line", op["line"]))
    return keys


def _verdict(ops: list[dict]) -> tuple[bool, int]:
    circuit = raw(ops, modes=4)
    try:
        plan = compile_circuit(circuit, DEVICE)
    except CircuitError as exc:
        return False, len(exc.problems)
    assert plan_problems(plan, DEVICE, circuit_ops=carried_ops(circuit)) == []
    return True, 0


@settings(max_examples=1000, deadline=None)
@given(delay_line_programs())
def test_the_verdict_on_delay_line_ops_does_not_depend_on_the_order_of_independent_ones(ops):
    """Two neighbouring ops that share no mode and no delay line (and neither lets time pass) commute.

    Every circuit the compiler accepts also compiles to a plan that keeps every invariant.
    """
    verdict = _verdict(ops)
    for i in range(len(ops) - 1):
        if "wait" not in (ops[i]["op"], ops[i + 1]["op"]) and not _touches(ops[i]) & _touches(ops[i + 1]):
            swapped = [*ops[:i], ops[i + 1], ops[i], *ops[i + 2 :]]
            assert _verdict(swapped) == verdict, f"ops {i} and {i + 1} swapped"


# --- plans realise the circuit -------------------------------------------------------------------


def random_unitary(k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(k, k)) + 1j * rng.normal(size=(k, k)))
    return q * (np.diag(r) / abs(np.diag(r)))


def test_the_mesh_of_a_plan_is_the_circuit_s_unitary_on_the_placed_modes():
    u = random_unitary(4, 1)
    circuit = (
        CircuitBuilder(4)
        .input(0)
        .input(2)
        .unitary([0, 1, 2, 3], u)
        .bs(1, 2, theta=0.3, phi=0.2)
        .measure([0, 1, 2, 3], "c")
        .build()
    )
    plan = compile_circuit(circuit, DEVICE)
    validate_plan(plan, DEVICE)
    (phase,) = plan.phases
    mesh = mesh_unitary(np.array(phase.mesh_phases))
    where = {p.logical: p.physical for p in phase.placement}
    rows = [where[q] for q in range(4)]
    c, s = math.cos(0.3), math.sin(0.3)
    e = complex(math.cos(0.2), math.sin(0.2))
    bs = np.eye(4, dtype=complex)
    bs[1:3, 1:3] = [[c, 1j * s / e], [1j * s * e, c]]
    assert np.abs(mesh[np.ix_(rows, rows)] - bs @ u).max() < 1e-9
    unused = [q for q in range(DEVICE.modes) if q not in rows]
    assert np.abs(mesh[np.ix_(unused, unused)] - np.eye(len(unused))).max() < 1e-9
    assert [i.mode for i in phase.inputs] == [where[0], where[2]]


def test_hom_plan_gives_the_hong_ou_mandel_dip():
    plan = compile_circuit(hom(), DEVICE)
    (phase,) = plan.phases
    mesh = mesh_unitary(np.array(phase.mesh_phases))
    photons = [0] * DEVICE.modes
    for i in phase.inputs:
        photons[i.mode] = 1
    distribution = output_distribution(mesh, photons)
    columns = phase.registers[0].columns
    coincidence = sum(p for pattern, p in distribution.items() if all(pattern[c] == 1 for c in columns))
    assert coincidence < 1e-12


def test_feed_forward_branches_cover_every_outcome_and_name_the_configuration():
    first_pass = CircuitBuilder(4).input(0).input(1).bs(0, 1).store(1, "m").measure([0], "a")
    circuit = feed_forward(first_pass, wait_ns=300).input(3).measure([3], "z").measure([2], "b").build()
    plan = compile_circuit(circuit, DEVICE)
    validate_plan(plan, DEVICE, circuit_ops=carried_ops(circuit))
    (phase,) = plan.phases
    assert phase.width == 2 * DEVICE.modes
    (route,) = phase.delay_lines
    assert route.rounds == 12  # 300 ns of 25 ns round trips
    assert [b.pattern for b in phase.branches] == ["0", "1"]
    assert phase.branches[1].phases == {route.in_mode: math.pi}
    assert phase.branches[0].phases == {}
    b = next(r for r in phase.registers if r.name == "b")
    assert b.columns == [DEVICE.modes + route.in_mode]
    assert b.pass_ == 2
    (deadline,) = phase.deadlines
    assert (deadline.stored_ns, deadline.slack_ns) == (300.0, 1050.0)
    assert plan.metrics.min_slack_ns == 1050.0


def carried_ops(circuit: Circuit) -> list[str]:
    """Index paths of the operations a phase must carry out (waits and the if itself are not carried)."""
    ops, _ = parse_ops(circuit)
    return [path for path, op, _ in walk(ops) if not isinstance(op, Wait | If)]


def test_components_that_contend_for_delay_lines_are_serialised_into_phases():
    b = CircuitBuilder(6)
    for pair in range(3):  # three independent store/load experiments, two delay lines on the chip
        src, _dst = 2 * pair, 2 * pair + 1
        b.input(src).store(src, f"m{pair}")
    b.wait(100)
    for pair in range(3):
        b.load(f"m{pair}", 2 * pair + 1).measure([2 * pair + 1], f"r{pair}")
    plan = compile_circuit(b.build(), DEVICE)
    validate_plan(plan, DEVICE)
    assert [len(p.delay_lines) for p in plan.phases] == [2, 1]
    assert all(len({r.line for r in p.delay_lines}) == len(p.delay_lines) for p in plan.phases)


def test_new_inputs_after_measurement_start_a_new_round_and_depend_on_the_earlier_one():
    plan = compile_circuit(two_rounds(), DEVICE)
    assert [(p.round, p.depends_on) for p in plan.phases] == [(0, []), (1, [0])]
    with pytest.raises(CircuitError, match="gets a new input while modes \\[1\\] are still in flight"):
        compile_circuit(CircuitBuilder(2).input(0).input(1).measure([0], "a").input(0).build(), DEVICE)


def test_degraded_components_are_avoided():
    circuit = hom()
    healthy = compile_circuit(circuit, DEVICE)
    sick = compile_circuit(circuit, DEVICE, health=Health(modes=frozenset({0}), detectors=frozenset({1, 2})))
    validate_plan(sick, DEVICE)
    assert sorted(healthy.phases[0].resources.modes) == [0, 1]
    used = sick.phases[0].resources.modes
    assert 0 not in used
    assert not {1, 2} & set(sick.phases[0].registers[0].columns)
    assert sick.id != healthy.id


def test_the_static_plan_is_deterministic_and_dynamic_without_feedback_equals_it():
    circuit = (
        CircuitBuilder(3).input(0).input(1).unitary([0, 1, 2], random_unitary(3, 5)).measure([0, 1, 2], "c").build()
    )
    first, second = compile_circuit(circuit, DEVICE), compile_circuit(circuit, DEVICE)
    assert msgspec.structs.replace(first, metrics=second.metrics) == second
    dynamic = StrategyConfig(kind="dynamic", objectives=["min_duration"])
    assert apply_strategy(first, dynamic, Feedback()) is first


def test_a_dynamic_strategy_routes_around_failing_parts_orders_by_slack_and_learns_durations():
    b = CircuitBuilder(6, shots=1000)
    for pair in range(3):
        b.input(2 * pair).store(2 * pair, f"m{pair}")
    b.wait(100).load("m0", 1).load("m1", 3).wait(900).load("m2", 5).measure([1], "a").measure([3], "b").measure(
        [5], "c"
    )
    plan = compile_circuit(b.build(), DEVICE)
    assert [[d.line for d in p.deadlines] for p in plan.phases] == [["m0", "m1"], ["m2"]]
    feedback = Feedback()
    for _ in range(5):
        feedback.record(plan.phases[0], ok=False, duration_s=plan.phases[0].duration_s * 2, failed=["mode:0"])
    strategy = StrategyConfig(kind="dynamic", objectives=["max_slack"])
    shaped = apply_strategy(plan, strategy, feedback)
    validate_plan(shaped, DEVICE)
    assert [[d.line for d in p.deadlines] for p in shaped.phases] == [["m2"], ["m0", "m1"]]  # least slack first
    assert shaped.metrics.total_duration_s == pytest.approx(2 * plan.metrics.total_duration_s)
    health = combined_health(Health(), strategy, feedback)
    assert health.modes == frozenset({0})
    rerouted = compile_circuit(b.build(), DEVICE, health=health)
    assert all(0 not in p.resources.modes for p in rerouted.phases)


@pytest.mark.parametrize(
    ("settings_", "problem"),
    [
        ({"weights": {"duration": 11}}, "Expected `float` <= 10"),
        ({"objectives": ["fifo", "min_duration"]}, "fifo keeps circuit order and cannot be combined"),
        ({"objectives": []}, "needs at least one objective"),
        (
            {"preempt": False, "max_job_s": 3600, "max_wait_s": 60},
            "priority inversion: a higher-priority job could wait 3600 s",
        ),
        ({"max_phase_s": 300, "max_wait_s": 60}, "priority inversion: .* 300 s for the device \\(max_phase_s\\)"),
    ],
)
def test_strategy_configurations_that_make_no_sense_are_refused(settings_, problem):
    with pytest.raises(msgspec.ValidationError, match=problem):
        msgspec.convert(settings_, StrategyConfig)


# --- every plan passes validate_plan -------------------------------------------------------------


@st.composite
def circuits(draw: st.DrawFn) -> Circuit:
    modes = draw(st.integers(2, 10))
    b = CircuitBuilder(modes, shots=draw(st.integers(1, 10_000)))
    lines: dict[str, int] = {}
    registers: list[str] = []
    for step in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["input", "ps", "bs", "mzi", "unitary", "store", "load", "wait", "measure", "if"]))
        q = draw(st.integers(0, modes - 1))
        r = draw(st.integers(0, modes - 1))
        if kind == "input":
            b.input(q, draw(st.sampled_from(["photon", "vacuum", "coherent"])), power_w=1e-6)
        elif kind == "ps":
            b.ps(q, draw(st.floats(-7, 7)))
        elif kind in ("bs", "mzi") and q != r:
            getattr(b, kind)(q, r, draw(st.floats(0, 7)))
        elif kind == "unitary":
            chosen = draw(st.lists(st.integers(0, modes - 1), min_size=1, max_size=4, unique=True))
            b.unitary(chosen, random_unitary(len(chosen), step))
        elif kind == "store":
            b.store(q, f"s{step}")
            lines[f"s{step}"] = q
        elif kind == "load" and lines:
            b.load(draw(st.sampled_from(sorted(lines))), q)
        elif kind == "wait":
            b.wait(draw(st.floats(1, 800)))
        elif kind == "measure":
            chosen = draw(st.lists(st.integers(0, modes - 1), min_size=1, max_size=3, unique=True))
            b.measure(chosen, f"c{step}")
            registers.append(f"c{step}")
        elif kind == "if" and registers:
            b.if_(draw(st.sampled_from(registers)), draw(st.integers(0, 1))).ps(q, 1.0).end()
    return b.build()


@st.composite
def shot_structures(draw: st.DrawFn) -> Circuit:
    """Circuits shaped like real experiments: rounds of inputs, gates, stores, waits, loads, feed-forward."""
    modes = draw(st.integers(4, 12))
    b = CircuitBuilder(modes, shots=draw(st.integers(1, 5000)))
    for round_ in range(draw(st.integers(1, 3))):
        order = draw(st.permutations(range(modes)))
        k = draw(st.integers(1, max(1, modes // 2)))
        first, free = list(order[:k]), list(order[k:])
        for q in first:
            b.input(q, draw(st.sampled_from(["photon", "photon", "vacuum"])))
        for _ in range(draw(st.integers(0, 6))):
            chosen = draw(st.lists(st.sampled_from(first), min_size=1, max_size=min(3, len(first)), unique=True))
            b.unitary(chosen, random_unitary(len(chosen), draw(st.integers(0, 99))))
        stored = draw(st.lists(st.sampled_from(first), max_size=min(2, len(first) - 1), unique=True)) if k > 1 else []
        for q in stored:
            b.store(q, f"s{round_}_{q}")
        measured = [q for q in first if q not in stored]
        register = f"a{round_}"
        b.measure(measured, register)
        b.wait(draw(st.floats(10, 1300 / max(1, len(stored) + 1))))
        targets = free[: len(stored)]
        for q, t in zip(stored, targets, strict=False):
            b.load(f"s{round_}_{q}", t)
            b.wait(draw(st.floats(0.5, 50)))
        if targets and len(measured) <= 3 and draw(st.booleans()):
            b.if_(register, draw(st.integers(0, 2 ** len(measured) - 1))).ps(targets[0], draw(st.floats(0, 6))).end()
        if len(targets) > 1:
            b.bs(targets[0], targets[1], draw(st.floats(0, 3)))
        if targets:
            b.measure(targets, f"b{round_}")
    return b.build()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(circuits(), shot_structures()))
def test_every_plan_the_scheduler_emits_passes_validate_plan(circuit):
    try:
        plan = compile_circuit(circuit, DEVICE)
    except CircuitError as exc:
        problems = exc.problems
    else:
        assert plan_problems(plan, DEVICE, circuit_ops=carried_ops(circuit)) == []
        return
    assert problems  # a refused circuit says why
    assert all(p.message for p in problems)


def test_analysis_is_linear_and_finds_the_dependency_graph():
    b = CircuitBuilder(32)
    for q in range(32):
        b.input(q)
    for layer in range(10):
        for q in range(layer % 2, 31, 2):
            b.bs(q, q + 1)
    for part in range(4):  # four registers of 8 bits: one of 32 would need a 2^32-bin histogram
        b.measure(list(range(8 * part, 8 * part + 8)), f"c{part}")
    analysis = analyse(b.build(), BIG, Limits())
    assert analysis.problems == []
    assert len(analysis.predecessors) == 32 + 155 + 4
    assert analysis.edges == sum(len(p) for p in analysis.predecessors)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.integers(0, 400), st.integers(0, 2**32 - 1))
def test_long_gate_sequences_compose_to_the_product_of_their_matrices(modes, gates, seed):
    """The compiler multiplies gates layer by layer across blocks; the result is the plain product."""
    rng = np.random.default_rng(seed)
    b = CircuitBuilder(modes)
    for q in range(modes):
        b.input(q)
    expected = np.eye(modes, dtype=complex)
    for _ in range(gates):
        kind = rng.integers(3)
        a, c = (int(x) for x in rng.choice(modes, 2, replace=False))
        theta, phi = rng.uniform(0, 2 * math.pi, 2)
        g = np.eye(modes, dtype=complex)
        if kind == 0:
            b.ps(a, phi)
            g[a, a] = np.exp(1j * phi)
        elif kind == 1:
            b.bs(a, c, theta, phi)
            e = np.exp(1j * phi)
            g[np.ix_([a, c], [a, c])] = [
                [math.cos(theta), 1j * math.sin(theta) / e],
                [1j * math.sin(theta) * e, math.cos(theta)],
            ]
        else:
            b.mzi(a, c, theta, phi)
            g[np.ix_([a, c], [a, c])] = mzi(theta, phi)
        expected = g @ expected
    plan = compile_circuit(b.measure(list(range(modes)), "c").build(), BIG)
    (phase,) = plan.phases
    rows = [next(p.physical for p in phase.placement if p.logical == q) for q in range(modes)]
    mesh = mesh_unitary(np.array(phase.mesh_phases))
    assert np.abs(mesh[np.ix_(rows, rows)] - expected).max() < 1e-8
