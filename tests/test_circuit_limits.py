"""Every size a client controls has a limit, checked before anything proportional to it is built.

A circuit is the one thing a client sends the scheduler that makes it work in
proportion to what was asked: modes size per-mode state, registers size
2^bits histograms, rounds size phases of m² heater settings each, nesting
sizes the parser's stack. Each such size is refused with ``invalid-circuit``
naming the op and key (docs/circuits.md, "Limits"), promptly and with little
memory, and nothing a client writes makes parsing, validation or compilation
raise anything else.
"""

from __future__ import annotations

import math
import tracemalloc
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.scheduler import Limits, analyse, compile_circuit, plan_problems
from protocol.circuit import (
    OP_NAMES,
    Circuit,
    CircuitBuilder,
    CircuitError,
    circuit_hash,
    load_circuit,
    parse_circuit,
)
from protocol.plan import Branch
from protocol.scheduler import Submit, Validate
from runtime import RemoteError

from .chips import BIG, DEVICE
from .test_circuit_problems import OP_FIELDS, assert_names_real_keys, bs, ff, inp, measure, ps, unitary, wait
from .test_scheduler import lab


def refused(data: dict[str, Any], device=DEVICE, **limits: Any) -> list[Any]:
    with pytest.raises(CircuitError) as caught:
        compile_circuit(parse_circuit(data), device, limits=Limits(**limits))
    assert_names_real_keys(data, caught.value.problems)
    return caught.value.problems


def peak_bytes(fn: Any, *args: Any, **kwargs: Any) -> int:
    tracemalloc.start()
    try:
        fn(*args, **kwargs)
    except CircuitError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


# --- the header and the op count, before anything else --------------------------------------------


@pytest.mark.parametrize("modes", [2**31, 2**63 - 1])
def test_an_absurd_number_of_modes_is_refused_with_little_memory(modes):
    """sched.validate with 2^31 modes grew the scheduler by 700 MB a second: per-mode state came first."""
    circuit = msgspec.convert({"modes": modes, "ops": [inp(0), measure([0], "c")]}, Circuit)
    with pytest.raises(CircuitError) as caught:
        compile_circuit(circuit, DEVICE)
    ((op, field, message),) = [(p.op, p.field, p.message) for p in caught.value.problems]
    assert (op, field) == (None, "modes")
    assert "more than the configured limit of 1024" in message
    assert peak_bytes(compile_circuit, circuit, DEVICE) < 200_000


async def test_the_scheduler_answers_validate_and_submit_of_2_to_the_31_modes_with_the_problem(tmp_path):
    absurd = msgspec.convert({"modes": 2**31, "ops": [inp(0), measure([0], "c")]}, Circuit)
    async with lab(tmp_path) as lab_:
        report = await lab_.sched(Validate(circuit=absurd))
        assert not report.ok
        assert [(p.op, p.field) for p in report.problems] == [(None, "modes")]
        with pytest.raises(RemoteError, match=r"circuit \(modes\): 2147483648 modes .*\[invalid-circuit\]"):
            await lab_.sched(Submit(circuit=absurd, job="absurd"))
        assert (await lab_.sched(Validate(circuit=CircuitBuilder(1).input(0).measure([0], "c").build()))).ok


def test_too_many_ops_are_refused_before_they_are_parsed():
    ops = [inp(0), measure([0], "c")] * 50_000 + [ff("c", 0, *[ps(0)] * 1000)]
    circuit = msgspec.convert({"modes": 1, "ops": ops}, Circuit)
    (problem,) = refused(msgspec.to_builtins(circuit), max_ops=100_000)
    assert (problem.op, problem.field) == (None, "ops")
    assert "101,001 operations (conditionals' bodies included)" in problem.message
    assert peak_bytes(compile_circuit, circuit, DEVICE, limits=Limits(max_ops=100_000)) < 200_000


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        ({"max_modes": 0}, "limits.max_modes must be at least 1"),
        ({"max_ff_bits": 17}, "at most 65,536 feed-forward branches in a phase"),
        ({"max_phases": 100_000}, "at most 65,536 phases in a plan"),
        ({"max_ops": 2**21}, "at most 1,048,576 operations in a phase"),
    ],
)
def test_limits_that_would_allow_plans_the_protocol_cannot_carry_are_refused(limits, problem):
    with pytest.raises(msgspec.ValidationError, match=problem):
        msgspec.convert(limits, Limits)


def test_the_problems_listed_are_bounded_and_the_rest_counted():
    found = refused({"modes": 1, "ops": [ps(5)] * 1000})
    assert len(found) == 101
    assert [p.op for p in found[:100]] == [str(i) for i in range(100)]
    assert (found[-1].op, found[-1].field, found[-1].message) == (None, None, "900 more problems are not listed")
    assert len(refused({"modes": 1, "ops": [ps(5)] * 20}, max_problems=5)) == 6


# --- every limit, named at the op and key that go beyond it ------------------------------------------


def rounds(n: int) -> list[dict]:
    return [x for _ in range(n) for x in (inp(0), measure([0], "c" if _ == 0 else f"c{_}"))]


LIMITS: list[tuple[str, dict[str, Any], dict[str, Any], tuple[str | None, str | None, str]]] = [
    ("name", {"name": "x" * 300}, {}, (None, "name", "300 characters")),
    ("modes beyond 64 bits", {"modes": 10**40}, {}, (None, "modes", "Expected `int` <= 9223372036854775807")),
    ("priority", {"priority": 2**40}, {}, (None, "priority", "Expected `int` <= 2147483647")),
    ("deadline", {"deadline": math.inf}, {}, (None, "deadline", "Expected a finite number")),
    ("period", {"run": {"mode": "cyclic", "period_s": math.inf}}, {}, (None, "run.period_s", "a finite number")),
    ("cycles", {"run": {"mode": "cyclic", "cycles": 2**64}}, {}, (None, "run.cycles", "<= 9223372036854775807")),
    ("a long name", {"name": "x" * 70_000}, {}, (None, "name", "Expected `str` of length <= 65536")),
    (
        "a register",
        {"ops": [inp(0), inp(1), inp(2), measure([0, 1, 2], "c")]},
        {"max_register_bits": 2},
        ("3", "modes", "3 bits"),
    ),
    (
        "all registers",
        {"ops": [inp(0), inp(1), inp(2), measure([0, 1], "a"), measure([2], "b")]},
        {"max_result_bins": 5},
        ("4", "modes", "6 histogram bins"),
    ),
    ("no modes measured", {"ops": [measure([], "c")]}, {}, ("0", "modes", "at least one mode")),
    ("no modes transformed", {"ops": [{"op": "unitary", "modes": [], "re": []}]}, {}, ("0", "modes", "at least one")),
    ("wider than the chip", {"modes": 9, "ops": [unitary(list(range(9)), np.eye(9))]}, {}, ("0", "modes", "9 modes")),
    ("more modes than declared", {"ops": [measure(list(range(6)), "c")]}, {}, ("0", "modes", "6 modes")),
    ("ragged", {"ops": [{"op": "unitary", "modes": [0, 1], "re": [[1, 0], [0]]}]}, {}, ("0", "re", "2x2")),
    (
        "imaginary parts",
        {"ops": [{"op": "unitary", "modes": [0], "re": [[1]], "im": [[0, 1]]}]},
        {},
        ("0", "im", "1x1"),
    ),
    (
        "nan in a matrix",
        {"ops": [{"op": "unitary", "modes": [0], "re": [[math.nan]]}]},
        {},
        ("0", "re", "a finite number"),
    ),
    ("theta", {"ops": [inp(0), inp(1), {**bs(0, 1), "theta": math.inf}]}, {}, ("2", "theta", "a finite number")),
    ("phi", {"ops": [inp(0), ps(0, math.nan)]}, {}, ("1", "phi", "a finite number")),
    ("phase", {"ops": [inp(0, state="coherent", phase=math.inf)]}, {}, ("0", "phase", "a finite number")),
    ("power", {"ops": [inp(0, state="vacuum", power_w=math.inf)]}, {}, ("0", "power_w", "a finite number")),
    ("a long wait", {"ops": [wait(2e9)]}, {}, ("0", "ns", "more than the configured limit of 1e+09 ns")),
    ("an endless wait", {"ops": [wait(math.inf)]}, {}, ("0", "ns", "a finite number")),
    ("rounds", {"modes": 1, "ops": rounds(5)}, {"max_phases": 3}, ("6", "mode", "round 4")),
    ("nested if", {"ops": [inp(0), measure([0], "c"), ff("c", 1, ff("c", 0, ps(0)))]}, {}, ("2.ops.0", "op", "nested")),
    ("a mode beyond 31 bits", {"ops": [ps(2**40)]}, {}, ("0", "mode", "Expected `int` <= 2147483647")),
    ("a huge mode", {"ops": [{"op": "ps", "mode": 10**5000, "phi": 0}]}, {}, ("0", "mode", "")),
    ("a huge input", {"ops": [inp(10**5000)]}, {}, ("0", "mode", "")),  # msgspec may not even read it
    ("a huge equals", {"ops": [inp(0), measure([0], "c"), ff("c", 10**5000)]}, {}, ("2", "equals", "")),
]


@pytest.mark.parametrize(("header", "options", "expected"), [k[1:] for k in LIMITS], ids=[k[0] for k in LIMITS])
def test_each_limit_is_refused_at_the_op_and_key_beyond_it(header, options, expected):
    data = {"modes": 4, "ops": [], **header}
    found = refused(data, **options)
    op, field, text = expected
    assert any((p.op, p.field) == (op, field) and text in p.message for p in found), [str(p) for p in found]


def test_feed_forward_branches_are_bounded_per_phase_and_per_plan():
    """Components packed into one phase multiply their branches: 2^(their bits added up)."""
    b = CircuitBuilder(16)
    for base in (0, 8):  # two experiments of 3 feed-forward bits each, side by side in one round
        for q in range(4):
            b.input(base + q)
        b.store(base + 3, f"m{base}").measure([base, base + 1, base + 2], f"a{base}").wait(300)
        b.load(f"m{base}", base + 4).if_(f"a{base}", 5).ps(base + 4, 1.0).end().measure([base + 4], f"b{base}")
    circuit = b.build()
    plan = compile_circuit(circuit, BIG, limits=Limits(max_ff_bits=4))
    assert plan_problems(plan, BIG) == []
    assert [len(p.ff_modes) for p in plan.phases] == [3, 3]  # together they would read 6 bits
    assert len(compile_circuit(circuit, BIG).phases) == 1  # within 10 bits they share a phase
    (problem,) = refused(msgspec.to_builtins(circuit), BIG, max_branches=10)
    assert (problem.op, problem.field) == ("8", "register")
    assert "64 feed-forward branches" in problem.message


def test_phases_beyond_the_limit_are_refused_at_the_first_op_they_hold():
    b = CircuitBuilder(8)
    for q in range(8):  # eight one-mode experiments with a photon in a delay line each: two delay lines, four phases
        b.input(q).store(q, f"m{q}")
    for q in range(8):
        b.load(f"m{q}", q).measure([q], f"c{q}")
    (problem,) = refused(msgspec.to_builtins(b.build()), max_phases=3)
    assert (problem.op, problem.field) == ("12", "mode")
    assert "4 phases" in problem.message


def test_a_plan_claiming_feed_forward_on_many_modes_is_checked_without_enumerating_them():
    plan = compile_circuit(
        CircuitBuilder(3)
        .input(0)
        .input(1)
        .store(1, "m")
        .measure([0], "a")
        .wait(300)
        .load("m", 2)
        .if_("a", 1)
        .ps(2, 1.0)
        .end()
        .measure([2], "b")
        .build(),
        DEVICE,
    )
    (phase,) = plan.phases
    forged = msgspec.structs.replace(
        plan,
        phases=[
            msgspec.structs.replace(phase, ff_modes=[0] * 64, branches=[Branch(pattern="0", outcome={}, phases={})])
        ],
    )
    found = plan_problems(forged, DEVICE)
    assert any("plans 1 branches for 2^64 outcomes" in p for p in found)


@pytest.mark.parametrize(
    ("ops", "problem"),
    [
        (["0-999999999999"], "names more than 10,000,000 operations"),
        (["a-b"], "not an op path"),
        (["1-2-3"], "not an op path"),
        (["5-2"], "not an op path"),
    ],
)
def test_a_plan_naming_absurd_op_ranges_is_checked_without_listing_them(ops, problem):
    """Plans come from clients too (sched.submit_procedure): their op ranges are sizes they chose."""
    plan = compile_circuit(CircuitBuilder(1).input(0).measure([0], "c").build(), DEVICE)
    phase = msgspec.structs.replace(plan.phases[0])
    msgspec.structs.force_setattr(phase, "ops", ops)  # past the schema's own checks: validate_plan stands alone
    forged = msgspec.structs.replace(plan, phases=[phase])
    tracemalloc.start()
    try:
        found = plan_problems(forged, DEVICE)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert any(problem in p for p in found), found
    assert peak < 1_000_000


def test_the_dependency_graph_stays_linear_with_many_photons_in_delay_lines_and_many_waits():
    """A guard: a wait depends on the last wait and what was stored or loaded since, not on every photon held."""
    b = CircuitBuilder(64)
    for q in range(32):
        b.input(q).store(q, f"m{q}")
    for _ in range(2000):
        b.wait(0.1)
    for q in range(32):
        b.load(f"m{q}", 32 + q)
    analysis = analyse(b.build(), BIG, Limits())
    assert analysis.edges <= 3 * len(analysis.predecessors)


def test_many_small_experiments_beside_a_wide_one_take_memory_for_their_own_size():
    """The gates of each component are multiplied in arrays sized for it, not padded to the widest."""
    b = CircuitBuilder(32).input(0).input(1).unitary(range(32), np.eye(32))
    for part in range(4):
        b.measure(list(range(8 * part, 8 * part + 8)), f"wide{part}")
    for r in range(100):  # 100 rounds of 32 one-mode experiments: 3,200 one-mode unitaries to multiply
        for q in range(32):
            b.input(q).ps(q, 0.1 * r).measure([q], f"r{r}_{q}")
    circuit = b.build()
    assert len(compile_circuit(circuit, BIG).phases) == 101
    assert peak_bytes(compile_circuit, circuit, BIG) < 25_000_000  # padded: 3,201 x 33 x 32 x 16 bytes, 54 MB


ARRAY = np.arange(3)


@pytest.mark.parametrize(
    "ops",
    [
        [ARRAY],
        [{"op": ARRAY}],
        [{"op": np.array([])}],
        [{"op": "ps", "mode": ARRAY, "phi": 0}],
        [{"op": "if", "register": "c", "equals": 0, "ops": ARRAY}],
        [{"op": "measure", "modes": [0], "into": "c"}, {"op": "if", "register": "c", "equals": 0, "ops": [ARRAY]}],
        [{"op": "unitary", "modes": [0], "re": [[ARRAY]]}],
    ],
    ids=["an op", "an op's name", "an empty name", "a mode", "a body", "in a body", "a matrix entry"],
)
def test_numpy_arrays_among_the_ops_are_problems_of_the_circuit(ops):
    """The wire's codec turns its ndarray extension into numpy arrays wherever they are, ops included."""
    circuit = msgspec.convert({"modes": 1, "ops": ops}, Circuit)
    with pytest.raises(CircuitError):
        circuit_hash(circuit)
    with pytest.raises(CircuitError):
        compile_circuit(circuit, DEVICE)


# --- nesting --------------------------------------------------------------------------------------------


def deep_if(depth: int) -> dict:
    body: list[Any] = [ps(0)]
    for _ in range(depth):
        body = [ff("c", 0, *body)]
    return body[0]


@pytest.mark.parametrize("depth", [2, 500, 100_000])
def test_deeply_nested_conditionals_are_refused_without_recursion(depth):
    data = {"modes": 1, "ops": [inp(0), measure([0], "c"), deep_if(depth)]}
    with pytest.raises(CircuitError) as caught:
        parse_circuit(data)
    assert [(p.op, p.field) for p in caught.value.problems] == [("2.ops.0", "op")]
    circuit = msgspec.convert(data, Circuit)
    with pytest.raises(CircuitError):
        compile_circuit(circuit, DEVICE)
    assert [(p.op, p.field) for p in analyse(circuit, DEVICE, Limits()).problems] == [("2.ops.0", "op")]


def test_a_json_file_nested_too_deep_to_decode_is_refused():
    text = b'{"modes": 1, "ops": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(CircuitError, match="nests too deep"):
        load_circuit(text)


def test_a_circuit_nested_too_deep_to_hash_is_refused():
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    circuit = msgspec.convert({"modes": 1, "ops": [{"op": "ps", "mode": 0, "phi": 0, "x": deep}]}, Circuit)
    with pytest.raises(CircuitError, match="nest too deep"):
        circuit_hash(circuit)
    with pytest.raises(CircuitError, match="unknown field `x`"):
        compile_circuit(circuit, DEVICE)


# --- anything at all ----------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 8),
    st.integers(),
    st.sampled_from([2**31, 2**63 - 1, 2**64, -(2**63), 10**30, 10**400]),
    st.floats(),
    st.sampled_from(["photon", "vacuum", "coherent", "m", "c", "", "x" * 100]),
    st.sampled_from(OP_NAMES),
)
WILD = st.one_of(
    SCALARS,
    st.sampled_from([np.arange(2), np.array([]), np.float64("nan")]),  # what the codec's ndarray extension decodes to
    st.lists(SCALARS, max_size=3),
    st.recursive(
        SCALARS,
        lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=2), inner, max_size=2),
        max_leaves=4,
    ),
)
NAMES = st.sampled_from(["a", "b", "m", "n"])
MODE = st.integers(0, 4)
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "mode": MODE,
    "modes": st.lists(MODE, min_size=1, max_size=3),
    "state": st.sampled_from(["photon", "vacuum", "coherent"]),
    "power_w": st.sampled_from([0.0, 1e-6, 0.5]),
    "phase": st.floats(-7, 7),
    "phi": st.floats(-7, 7),
    "theta": st.floats(-7, 7),
    "re": st.sampled_from([[[1.0]], [[0.0, 1.0], [1.0, 0.0]], np.eye(3).tolist(), [[0.6, 0.8], [-0.8, 0.6]]]),
    "im": st.sampled_from([[], [[0.0]], [[0.0, 0.0], [0.0, 0.0]]]),
    "line": NAMES,
    "ns": st.sampled_from([10.0, 250.0, 800.0, 1500.0]),
    "into": NAMES,
    "register": NAMES,
    "equals": st.integers(0, 3),
}
FIELDS = {name: sorted(fields) for name, fields in OP_FIELDS.items()}


@st.composite
def any_op(draw: st.DrawFn, depth: int = 0) -> Any:
    """Op-shaped mostly: a known op with its own keys, each value plausible or wild, a key missing or extra."""
    if draw(st.integers(0, 19)) == 0:
        return draw(WILD)
    kind = draw(st.sampled_from(OP_NAMES)) if draw(st.integers(0, 9)) else draw(SCALARS)
    keys = list(FIELDS.get(kind, [])) if isinstance(kind, str) else []
    keys = [k for k in keys if draw(st.integers(0, 9))]  # now and then a key is missing
    keys += draw(st.lists(st.sampled_from([*PLAUSIBLE, "ops", "x"]), max_size=1))  # or one is extra
    op: dict[Any, Any] = {"op": kind}
    for key in keys:
        if key == "ops":
            op[key] = draw(st.lists(any_op(depth + 1), max_size=3)) if depth < 2 else draw(WILD)
        elif key in PLAUSIBLE and draw(st.integers(0, 9)):
            op[key] = draw(PLAUSIBLE[key])
        else:
            op[key] = draw(WILD)
    return op


@st.composite
def any_circuit(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 29)) == 0:
        return draw(WILD)
    modes = draw(st.integers(1, 5)) if draw(st.integers(0, 9)) else draw(SCALARS)
    data: dict[Any, Any] = {"modes": modes, "ops": draw(st.lists(any_op(), max_size=25))}
    for key in draw(st.lists(st.sampled_from(["shots", "priority", "deadline", "name", "run", "x"]), unique=True)):
        data[key] = draw(WILD)
    return data


def check_refusal(data: Any, refusal: CircuitError) -> None:
    assert refusal.problems
    assert refusal.code == "invalid-circuit"
    if isinstance(data, dict) and isinstance(data.get("ops"), list):
        assert_names_real_keys(data, refusal.problems)
    assert all(len(p.message) < 1000 for p in refusal.problems)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_circuit())
def test_anything_a_client_writes_gives_a_valid_plan_or_the_problems(data):
    """From JSON (`parse_circuit`) or as the wire's codec hands it over (a `Circuit` whose ops are anything)."""
    try:
        parse_circuit(data)
    except CircuitError as exc:
        check_refusal(data, exc)
    if not isinstance(data, dict) or any(isinstance(v, np.ndarray | np.generic) for v in data.values()):
        return  # the codec decodes only a map into a Circuit, and numpy arrays only where anything goes (ops)
    try:
        circuit = msgspec.convert(data, Circuit)
    except (msgspec.ValidationError, ValueError):
        return  # the codec refuses it before the scheduler sees it
    try:
        plan = compile_circuit(circuit, DEVICE)
    except CircuitError as exc:
        check_refusal(data, exc)
    else:
        assert plan_problems(plan, DEVICE) == []
