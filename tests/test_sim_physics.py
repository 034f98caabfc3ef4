"""The simulator's physics: meshes, decompositions, multi-photon statistics, loss and detectors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sim
from protocol import scpi
from protocol.mesh import clements_layout
from sim import (
    IDEAL_SOURCE,
    Device,
    SimConfig,
    clements,
    clifford_clifford,
    mesh_unitary,
    mzi,
    output_distribution,
    parse_config,
)
from sim._sampling import sample_ideal


def haar(m: int, rng: np.random.Generator) -> np.ndarray:
    z = (rng.normal(size=(m, m)) + 1j * rng.normal(size=(m, m))) / math.sqrt(2)
    q, r = np.linalg.qr(z)
    d = np.diag(r)
    return q * (d / abs(d))


def brute_permanent(matrix: np.ndarray) -> complex:
    n = len(matrix)
    return sum(np.prod([matrix[i, p[i]] for i in range(n)]) for p in itertools.permutations(range(n))) if n else 1


def brute_distribution(u: np.ndarray, photons: tuple[int, ...]) -> dict[tuple[int, ...], float]:
    m, n = len(photons), sum(photons)
    columns = [j for j, k in enumerate(photons) for _ in range(k)]
    norm = math.prod(math.factorial(k) for k in photons)
    result = {}
    for rows in itertools.combinations_with_replacement(range(m), n):
        pattern = tuple(rows.count(j) for j in range(m))
        p = abs(brute_permanent(u[np.ix_(rows, columns)])) ** 2
        result[pattern] = p / (norm * math.prod(math.factorial(k) for k in pattern))
    return result


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2**32 - 1))
def test_any_phases_give_a_unitary(m, seed):
    phases = np.random.default_rng(seed).uniform(0, 2 * math.pi, m * m)
    u = mesh_unitary(phases)
    assert np.abs(u.conj().T @ u - np.eye(m)).max() < 1e-12


@pytest.mark.parametrize("m", [2, 3, 4, 5, 8, 13, 16, 32])
def test_clements_reconstructs_haar_random_unitaries(m):
    rng = np.random.default_rng(m)
    for _ in range(3):
        u = haar(m, rng)
        assert np.abs(mesh_unitary(clements(u)) - u).max() < 1e-9


def test_clements_refuses_a_matrix_that_is_not_unitary():
    with pytest.raises(ValueError, match="not unitary"):
        clements(np.ones((3, 3)))


def test_mzi_settings_span_swap_to_straight_through():
    assert np.allclose(abs(mzi(0, 0)), [[0, 1], [1, 0]])
    assert np.allclose(abs(mzi(math.pi, 0)), [[1, 0], [0, 1]])
    assert np.allclose(abs(mzi(math.pi / 2, 0)) ** 2, 0.5)


def test_hong_ou_mandel_dip_at_a_balanced_coupler():
    coupler = mzi(math.pi / 2, 0.3)
    d = output_distribution(coupler, (1, 1))
    assert d[(1, 1)] == pytest.approx(0, abs=1e-15)
    assert d[(2, 0)] == pytest.approx(0.5)
    assert d[(0, 2)] == pytest.approx(0.5)
    # Distinguishable-like mixing elsewhere: an unbalanced coupler has coincidences.
    assert output_distribution(mzi(math.pi / 3, 0), (1, 1))[(1, 1)] == pytest.approx(
        (math.sin(math.pi / 6) ** 2 - math.cos(math.pi / 6) ** 2) ** 2
    )


@pytest.mark.parametrize(
    "photons", [(1, 1, 0, 0), (1, 0, 1, 1), (2, 1, 0, 0), (1, 1, 1, 1, 0), (0, 3, 0), (1, 1, 0, 1, 0, 1)]
)
def test_exact_distribution_equals_brute_force_permanents(photons):
    u = haar(len(photons), np.random.default_rng(sum(photons) * 7 + len(photons)))
    exact = output_distribution(u, photons)
    brute = brute_distribution(u, photons)
    assert exact.keys() == brute.keys()
    assert max(abs(exact[k] - brute[k]) for k in exact) < 1e-12


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 10), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_probabilities_sum_to_one(m, n, seed):
    rng = np.random.default_rng(seed)
    photons = tuple(int(x) for x in np.bincount(rng.integers(0, m, n), minlength=m))
    _, p = sim.output_probabilities(haar(m, rng), photons)
    assert p.sum() == pytest.approx(1, abs=1e-10)
    assert (p >= 0).all()


def dilated(u: np.ndarray, output_eta: np.ndarray, input_eta: float) -> np.ndarray:
    """U with loss made explicit: a beam splitter to its own loss mode on every input and output."""
    m = len(u)

    def splitters(eta: np.ndarray) -> np.ndarray:
        b = np.eye(2 * m, dtype=complex)
        for j, e in enumerate(eta):
            t, r = math.sqrt(e), math.sqrt(1 - e)
            b[np.ix_([j, m + j], [j, m + j])] = [[t, -r], [r, t]]
        return b

    big = np.eye(2 * m, dtype=complex)
    big[:m, :m] = u
    # Input loss modes and output loss modes are different modes: use a 3m-mode network.
    full = np.eye(3 * m, dtype=complex)
    inp = splitters(np.full(m, input_eta))
    out = splitters(output_eta)
    full[: 2 * m, : 2 * m] = big @ inp
    step = np.eye(3 * m, dtype=complex)
    index = [*range(m), *range(2 * m, 3 * m)]
    step[np.ix_(index, index)] = out
    result: np.ndarray = step @ full
    return result


def test_loss_commutes_to_the_outputs_exactly():
    # Equal loss on every input plus per-output loss, made explicit with loss
    # modes, gives exactly the binomial thinning sim applies at the outputs.
    rng = np.random.default_rng(21)
    m, photons = 3, (1, 1, 0)
    u = haar(m, rng)
    output_eta, input_eta = np.array([0.9, 0.6, 0.75]), 0.8
    explicit: dict[tuple[int, ...], float] = {}
    for pattern, p in output_distribution(dilated(u, output_eta, input_eta), (*photons, 0, 0, 0, 0, 0, 0)).items():
        key = pattern[:m]
        explicit[key] = explicit.get(key, 0.0) + p
    thinned = output_distribution(u, photons, transmission=input_eta * output_eta)
    assert len(thinned) == 10  # every pattern of 0, 1 or 2 photons in 3 modes
    assert max(abs(thinned.get(k, 0.0) - explicit.get(k, 0.0)) for k in {*thinned, *explicit}) < 1e-12
    assert sum(thinned.values()) == pytest.approx(1)


def total_variation(samples: np.ndarray, exact: dict[tuple[int, ...], float]) -> float:
    patterns, counts = np.unique(samples, axis=0, return_counts=True)
    seen = {tuple(p): c / len(samples) for p, c in zip(patterns.tolist(), counts, strict=True)}
    return 0.5 * sum(abs(seen.get(k, 0) - v) for k, v in exact.items())


@pytest.mark.parametrize("photons", [(1, 1, 1, 0, 0), (1, 0, 1, 0, 1, 1), (2, 0, 1, 0)])
def test_clifford_clifford_samples_the_exact_distribution(photons):
    rng = np.random.default_rng(11)
    u = haar(len(photons), rng)
    exact = output_distribution(u, photons)
    shots = 40_000
    samples = clifford_clifford(u, photons, shots, rng)
    # Expected total variation of an exact sampler is about sqrt(K / (2 pi N)) for K outcomes.
    assert total_variation(samples, exact) < 3 * math.sqrt(len(exact) / (2 * math.pi * shots))
    ideal = sample_ideal(u, photons, shots, rng)
    assert total_variation(ideal, exact) < 3 * math.sqrt(len(exact) / (2 * math.pi * shots))


# --- a configured device -------------------------------------------------------------------


def quiet_config(**overrides: object) -> SimConfig:
    """No spreads, drift or crosstalk: the device's true values are its nominal ones."""
    data: dict[str, object] = {
        "modes": 4,
        "heaters": {
            "resistance_spread": 0,
            "power_per_pi_spread": 0,
            "crosstalk": 0,
            "drift_rad_per_sqrt_hour": 0,
            "power_limit_w": 10.0,
        },
        "loss": {"output_spread_db": 0},
        "detectors": {"efficiency_spread": 0, "powermeter_gain_spread": 0},
        "sources": dict(IDEAL_SOURCE),
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}  # type: ignore[dict-item]
        else:
            data[key] = value
    return parse_config(data)


def program(device: Device, phases: np.ndarray) -> None:
    volts = device.chip.voltages_for(phases, device.clock)
    device.handle(b"HEAT:VOLT:ALL " + ",".join(f"{v:.15g}" for v in volts).encode())
    device.handle(b"*OPC?")
    assert device.handle(b"SYST:ERR?") == b'0,"No error"'


def identity_phases(m: int) -> np.ndarray:
    return clements(np.eye(m))


def test_single_photon_detection_rate_matches_losses_and_efficiency():
    config = quiet_config(loss={"input_db": 1.0, "mzi_db": 0.1, "output_db": 0.5}, detectors={"dark_rate_hz": 0})
    device = Device(config, seed=3)
    program(device, identity_phases(4))
    device.handle(b"INP:STAT 2,PHOT;SOUR:ENAB ON;RUN:SHOT 200000")
    counts = np.array(device.handle(b"FETC:COUN?").split(b","), dtype=int)
    p = 10 ** (-(1.0 + 0.1 * 4 + 0.5) / 10) * config.detectors.efficiency
    sigma = math.sqrt(p * (1 - p) / 200_000)
    assert counts[2] / 200_000 == pytest.approx(p, abs=4 * sigma)
    assert counts[[0, 1, 3]].sum() == 0  # identity mesh: nowhere else


def test_dark_counts_follow_the_configured_rate():
    config = quiet_config(detectors={"dark_rate_hz": 2e6, "gate_s": 1e-7})  # 0.2 per gate
    device = Device(config, seed=4)
    device.handle(b"SOUR:ENAB ON;RUN:SHOT 100000")
    counts = np.array(device.handle(b"FETC:COUN?").split(b","), dtype=int)
    p = 1 - math.exp(-0.2)
    sigma = math.sqrt(p * (1 - p) / 100_000)
    assert np.all(np.abs(counts / 100_000 - p) < 4 * sigma)


def test_photon_number_resolving_detectors_see_the_bunched_pairs():
    config = quiet_config(
        modes=2,
        detectors={"kind": "pnr", "dark_rate_hz": 0, "efficiency": 0.9},
        loss={"input_db": 0, "mzi_db": 0, "output_db": 0},
    )
    device = Device(config, seed=5)
    program(device, np.array([math.pi / 2, 0, 0, 0]))  # one balanced MZI, output phases 0
    device.handle(b"INP:STAT 0,PHOT;INP:STAT 1,PHOT;SOUR:ENAB ON;RUN:SHOT 100000")
    patterns = np.frombuffer(scpi.unblock(device.handle(b"FETC:PATT?")), dtype=np.uint8).reshape(-1, 2)
    totals = patterns.sum(axis=1)
    coincidences = np.mean((patterns[:, 0] == 1) & (patterns[:, 1] == 1))
    assert coincidences == 0  # Hong-Ou-Mandel: both photons leave together
    # Each of the two bunched photons is counted with probability 0.9: binomial(2, 0.9).
    for k, expected in [(2, 0.81), (1, 0.18), (0, 0.01)]:
        assert np.mean(totals == k) == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / 100_000))


def test_coherent_light_powers_follow_the_mesh():
    config = quiet_config(loss={"input_db": 0, "mzi_db": 0, "output_db": 0}, detectors={"powermeter_noise_w": 0})
    device = Device(config, seed=6)
    u = haar(4, np.random.default_rng(1))
    program(device, clements(u))
    device.handle(b"INP:STAT 1,COH,1e-3;SOUR:ENAB ON")
    powers = np.array(device.handle(b"MEAS:POW?").split(b","), dtype=float)
    assert np.allclose(powers, 1e-3 * abs(u[:, 1]) ** 2, rtol=1e-3, atol=1e-9)


def test_the_same_seed_and_commands_give_the_same_replies():
    script = [
        b"INP:STAT 0,PHOT;INP:STAT 3,PHOT;SOUR:ENAB ON",
        b"HEAT:VOLT 5,3.3",
        b"RUN:SHOT 500",
        b"FETC:PATT?",
        b"MEAS:POW?",
    ]

    def replies(seed: int) -> list[bytes | None]:
        device = Device(SimConfig(), seed=seed)
        return [device.handle(line) for line in script]

    assert replies(7) == replies(7)
    assert replies(7) != replies(8)


def test_settling_follows_the_time_constant():
    config = quiet_config(heaters={"settle_s": 1e-3}, command_s=1e-5)
    device = Device(config, seed=1)
    device.handle(b"HEAT:VOLT 0,5")
    assert device.handle(b"STAT:SETT?") == b"0"
    assert device.handle(b"*OPC?") == b"1"  # waits (in device time) until settled
    assert device.handle(b"STAT:SETT?") == b"1"


def test_drift_moves_phases_as_time_passes():
    config = quiet_config(heaters={"drift_rad_per_sqrt_hour": 0.5}, clock="commands", command_s=60.0)
    device = Device(config, seed=2)
    before = device.chip.phases(device.clock).copy()
    for _ in range(60):  # an hour of device time
        device.handle(b"*IDN?")
    moved = device.chip.phases(device.clock) - before
    assert 0.2 < np.std(moved) < 1.0  # about 0.5 rad after an hour


def test_delay_line_round_trips_cost_transmission_per_round():
    config = quiet_config(
        modes=2,
        loss={"input_db": 0, "mzi_db": 0, "output_db": 0},
        detectors={"efficiency": 1.0, "dark_rate_hz": 0},
        delay_lines={"rounds_at_1_over_e": 30.0, "max_rounds": 60},
    )
    for rounds, survive in [(15, math.exp(-0.5)), (30, math.exp(-1)), (61, 0.0)]:
        device = Device(config, seed=rounds)
        program(device, np.array([math.pi, 0, 0, 0]))  # straight through
        device.handle(f"INP:STAT 0,PHOT;DLIN:ROUT 0,0,0,{rounds};SOUR:ENAB ON;RUN:SHOT 50000".encode())
        counts = np.array(device.handle(b"FETC:COUN?").split(b","), dtype=int)
        # columns: first pass (mode 0 stored, so 0), then the second pass.
        assert counts[0] == 0
        assert counts[2] / 50000 == pytest.approx(
            survive, abs=4 * math.sqrt(max(survive * (1 - survive), 1e-9) / 50000)
        )


def test_feed_forward_phase_steers_a_stored_photon_only_when_it_arrives_in_time():
    # One photon split over modes 1 and 2, both stored, then recombined by the
    # same MZI: it leaves by one port, or by the other if feed-forward puts pi
    # between the two arms. Mode 0 (always dark) drives the rule.
    config = quiet_config(
        modes=3,
        loss={"input_db": 0, "mzi_db": 0, "output_db": 0},
        detectors={"efficiency": 1.0, "dark_rate_hz": 0},
        feedforward={"latency_s": 200e-9},
        delay_lines={"loop_s": 25e-9},
    )
    layout = clements_layout(3)
    phases = np.zeros(9)
    for block in layout.mzis:
        phases[block.theta_heater] = math.pi  # straight through...
    phases[layout.at(1, 1).theta_heater] = math.pi / 2  # ...except a balanced MZI on modes 1-2

    def second_pass(rounds: int, rule: bool) -> np.ndarray:
        device = Device(config, seed=9)
        program(device, phases)
        device.handle(f"INP:STAT 1,PHOT;DLIN:ROUT 0,1,1,{rounds};DLIN:ROUT 1,2,2,{rounds}".encode())
        device.handle(b"FFOR:MEAS 0")
        if rule:
            device.handle(b"FFOR:RULE 0,1,3.141592653589793")
        device.handle(b"SOUR:ENAB ON;RUN:SHOT 4000")
        assert device.handle(b"SYST:ERR?") == b'0,"No error"'
        counts = np.array(device.handle(b"FETC:COUN?").split(b","), dtype=int)
        assert counts[:3].sum() == 0  # nothing detected in the first pass
        return counts[3:]

    plain = second_pass(rounds=10, rule=False)
    steered = second_pass(rounds=10, rule=True)
    too_early = second_pass(rounds=4, rule=True)  # 100 ns < 200 ns latency: the phase comes too late
    # The photon survives 10 round trips with probability exp(-10/30), and then
    # leaves by exactly one port.
    assert plain.sum() / 4000 == pytest.approx(math.exp(-1 / 3), abs=0.03)
    assert list(plain > 0) == [False, True, False]
    assert list(steered > 0) == [False, False, True]
    assert list(too_early > 0) == [False, True, False]


def test_an_mzi_whose_bar_amplitude_is_subnormal_splits_without_an_overflow():
    # Found by Hypothesis through the scheduler: a swap whose bar amplitudes are 1e-309 (subnormal).
    # The branch np.where does not keep divided by sin(theta / 2) ~ 1e-309 and overflowed (a warning).
    from protocol.mesh import _split

    tiny = np.array([-8.41412978e-310 + 4.24430023e-309j])
    x, y, theta, phi = _split(tiny, np.array([4.6e-17 + 1j]), np.array([-1.7e-16 + 1j]), -np.conj(tiny))
    assert np.all(np.isfinite([x, y, theta, phi]))
    assert abs(x[0]) == pytest.approx(1.0)
    assert abs(y[0]) == pytest.approx(1.0)
