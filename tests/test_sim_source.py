"""Imperfect sources (decision 0017 §1-2): the exact click distribution, against Perceval and a brute force."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest

from protocol import scpi
from sim import (
    PUBLISHED_SOURCE,
    Device,
    SimConfigError,
    SourceError,
    SourceModel,
    click_distribution,
    output_probabilities,
    parse_config,
)
from sim._source import glynn_permanents, moebius

BALANCED = np.array([[1, 1j], [1j, 1]]) / math.sqrt(2)


def haar(m: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((m, m)) + 1j * rng.standard_normal((m, m))) / math.sqrt(2)
    q, r = np.linalg.qr(z)
    return q * (np.diagonal(r) / np.abs(np.diagonal(r)))


def test_two_sources_on_a_balanced_splitter_give_perceval_s_numbers():
    # perceval-quandela 1.3.1: Simulator(SLOSBackend()).probs_svd((Source(0.9, 0.02, 0.92), |1,1>),
    # detectors=[Detector.threshold()] * 2) at precision 1e-20.
    p = click_distribution(BALANCED, [0, 1], SourceModel(brightness=0.9, g2=0.02, indistinguishability=0.92))
    assert p[0b00] == pytest.approx(0.01, abs=1e-14)
    assert p[0b01] == pytest.approx(0.474832068093243, abs=1e-14)
    assert p[0b10] == pytest.approx(0.474832068093243, abs=1e-14)
    assert p[0b11] == pytest.approx(0.040335863813514075, abs=1e-14)


def test_the_emission_probabilities_are_perceval_s():
    # perceval's tests/components/test_source.py: Source(0.4, 0.1) emits |2> with 0.008336953374561418.
    p0, p1, p2 = SourceModel(brightness=0.4, g2=0.1).emission()
    assert p2 == pytest.approx(0.008336953374561418, abs=1e-15)
    assert p0 == pytest.approx(0.6)
    assert p1 + p2 == pytest.approx(0.4)
    assert 2 * p2 / (p1 + 2 * p2) ** 2 == pytest.approx(0.1, abs=1e-14)  # the g2 it was asked for


def test_without_noise_the_hom_visibility_is_the_indistinguishability():
    for m_value in (1.0, 0.92, 0.5, 0.0):
        source = SourceModel(indistinguishability=m_value)
        dip = click_distribution(BALANCED, [0, 1], source)[0b11]
        reference = click_distribution(np.eye(2), [0, 1], source)[0b11]
        assert 1 - 2 * dip / reference == pytest.approx(m_value, abs=1e-14)


def test_ideal_lossy_sources_give_the_thinned_permanent_distribution():
    u = haar(5, seed=3)
    eta = np.array([0.9, 0.7, 0.95, 0.6, 0.8])
    p = click_distribution(u, [0, 2, 3], efficiency=eta)
    expected = np.zeros(32)
    states, probs = output_probabilities(u, [1, 0, 1, 1, 0])
    for state, prob in zip(states, probs, strict=True):
        for kept in itertools.product(*(range(int(n) + 1) for n in state)):
            w = prob * math.prod(
                math.comb(int(n), k) * eta[j] ** k * (1 - eta[j]) ** (int(n) - k)
                for j, (n, k) in enumerate(zip(state, kept, strict=True))
            )
            expected[sum(1 << j for j, k in enumerate(kept) if k)] += w
    np.testing.assert_allclose(p, expected, atol=1e-13)


def brute_force(u, inputs, models, eta, dark):
    """Every source's state enumerated, each wavepacket's photons by permanents, convolved, then detected."""
    m = u.shape[0]
    states_of = []
    for model in models:
        p0, p1, p2 = model.emission()
        s = math.sqrt(model.indistinguishability)
        # (probability, shared signal photons, private photons)
        states_of.append([(p0, 0, 0), (s * p1, 1, 0), ((1 - s) * p1, 0, 1), (s * p2, 1, 1), ((1 - s) * p2, 0, 2)])
    clicks = np.zeros(1 << m)
    for config in itertools.product(*states_of):
        weight = math.prod(c[0] for c in config)
        if weight == 0:
            continue
        shared = [0] * m
        private: list[int] = []
        for mode, (_, sh, pr) in zip(inputs, config, strict=True):
            shared[mode] += sh
            private += [mode] * pr
        fock = {(0,) * m: 1.0}
        groups = [shared] + [[1 if j == mode else 0 for j in range(m)] for mode in private]
        for group in groups:
            if not any(group):
                continue
            states, probs = output_probabilities(u, group)
            merged: dict[tuple[int, ...], float] = defaultdict(float)
            for a, pa in fock.items():
                for b, pb in zip(states.tolist(), probs, strict=True):
                    merged[tuple(x + y for x, y in zip(a, b, strict=True))] += pa * pb
            fock = dict(merged)
        for state, prob in fock.items():
            none = [(1 - eta[j]) ** n * (1 - dark[j]) for j, n in enumerate(state)]
            for pattern in range(1 << m):
                clicks[pattern] += (
                    weight * prob * math.prod((1 - none[j]) if pattern >> j & 1 else none[j] for j in range(m))
                )
    return clicks


@pytest.mark.parametrize("seed", range(4))
def test_imperfect_sources_lossy_detectors_and_dark_counts_agree_with_a_brute_force(seed):
    rng = np.random.default_rng(seed)
    m, n = 4, 3
    u = haar(m, seed)
    inputs = sorted(rng.choice(m, size=n, replace=False).tolist())
    models = [
        SourceModel(brightness=rng.uniform(0.3, 1), g2=rng.uniform(0, 0.2), indistinguishability=rng.uniform(0.3, 1))
        for _ in range(n)
    ]
    eta = rng.uniform(0.5, 1, size=m)
    dark = rng.uniform(0, 0.05, size=m)
    # 20 % lost on the way, the same for every path: in the (sub-unitary) matrix, or in the outputs' efficiency.
    p = click_distribution(u * math.sqrt(0.8), inputs, models, efficiency=eta, dark=dark)
    np.testing.assert_allclose(p, brute_force(u, inputs, models, 0.8 * eta, dark), atol=1e-13)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert p.min() > -1e-15


def test_glynn_gives_the_permanent_and_moebius_inverts_the_zeta_transform():
    rng = np.random.default_rng(0)
    for k in (2, 3, 4, 5):  # 2 and 3 by their expansion, larger by Glynn's formula
        a = rng.standard_normal((3, k, k)) + 1j * rng.standard_normal((3, k, k))
        by_definition = [
            sum(math.prod(x[i, s[i]] for i in range(k)) for s in itertools.permutations(range(k))) for x in a
        ]
        np.testing.assert_allclose(glynn_permanents(a), by_definition, atol=1e-12)
    p = rng.random(16)
    zeta = np.array([sum(p[s] for s in range(16) if s & ~t == 0) for t in range(16)])
    np.testing.assert_allclose(moebius(zeta, 4), p, atol=1e-14)


def test_a_source_outside_its_range_is_refused_naming_the_parameter():
    with pytest.raises(SourceError, match="indistinguishability must lie in"):
        SourceModel(indistinguishability=1.2)
    with pytest.raises(SourceError, match="2 x brightness x g2"):
        SourceModel(brightness=1.0, g2=0.6)


# --- on the device -------------------------------------------------------------------------------


def hom_on_the_device(kind: str, shots: int, **sources: object) -> tuple[np.ndarray, np.ndarray]:
    """Two sources into one balanced MZI, then into a straight-through one: each round's patterns."""
    from tests.test_sim_physics import program, quiet_config

    config = quiet_config(
        modes=2,
        sources=sources,
        detectors={"kind": kind, "dark_rate_hz": 0},
        loss={"input_db": 1.0, "mzi_db": 0, "output_db": 0.5},
    )
    device = Device(config, seed=11)
    rounds = []
    for theta in (math.pi / 2, 0.0):  # balanced, then bar: no interference
        program(device, np.array([theta, 0, 0, 0]))
        device.handle(f"INP:STAT 0,PHOT;INP:STAT 1,PHOT;SOUR:ENAB ON;RUN:SHOT {shots}".encode())
        assert device.handle(b"SYST:ERR?") == b'0,"No error"'
        rounds.append(np.frombuffer(scpi.unblock(device.handle(b"FETC:PATT?")), dtype=np.uint8).reshape(-1, 2))
    return rounds[0], rounds[1]


@pytest.mark.parametrize("kind", ["threshold", "pnr"])
def test_the_device_s_hom_visibility_is_the_one_its_sources_give(kind):
    shots = 200_000
    sources = {"brightness": 0.8, "g2": 0.03, "indistinguishability": 0.9}
    dip, reference = hom_on_the_device(kind, shots, **sources)
    coincidences = int(np.sum((dip[:, 0] > 0) & (dip[:, 1] > 0)))
    reference_coincidences = int(np.sum((reference[:, 0] > 0) & (reference[:, 1] > 0)))
    visibility = 1 - 2 * coincidences / reference_coincidences
    # The exact answer, from the click distributions of the same chip (threshold: a click is n > 0).
    model = SourceModel(brightness=0.8, g2=0.03, indistinguishability=0.9)
    eta = 10 ** (-1.5 / 10) * 0.93
    expected_dip = click_distribution(BALANCED, [0, 1], model, efficiency=eta)[0b11]
    expected_reference = click_distribution(np.eye(2), [0, 1], model, efficiency=eta)[0b11]
    expected = 1 - 2 * expected_dip / expected_reference
    sigma = 2 * math.sqrt(coincidences) / reference_coincidences * math.sqrt(1 + coincidences / reference_coincidences)
    assert visibility == pytest.approx(expected, abs=4 * sigma)
    assert expected == pytest.approx(0.9 - 1.9 * 0.03, abs=0.02)  # Ollivier et al.: M - (1 + M) g2, to first order
    assert visibility < 0.9  # not the ideal chip's 1


def test_a_source_s_own_values_and_a_bad_device_file():
    config = parse_config({"modes": 4, "sources": {"g2": 0.01, "per_input": {"2": {"indistinguishability": 0.5}}}})
    published = PUBLISHED_SOURCE["brightness"]  # the default brightness: a published source's
    assert config.sources.model(2) == SourceModel(brightness=published, g2=0.01, indistinguishability=0.5)
    assert config.sources.model(0) == SourceModel(brightness=published, g2=0.01, indistinguishability=0.92)
    with pytest.raises(SimConfigError, match="input 7 does not exist"):
        parse_config({"modes": 4, "sources": {"per_input": {"7": {"g2": 0.1}}}})
    with pytest.raises(SimConfigError, match=r"sources\.per_input\.1: g2 0\.9"):
        parse_config({"modes": 4, "sources": {"per_input": {"1": {"g2": 0.9}}}})


@pytest.mark.parametrize("rounds", [15, 30])
def test_a_stored_photon_of_an_imperfect_source_comes_back_as_often_as_its_source_and_line_allow(rounds):
    from tests.test_sim_physics import program, quiet_config

    config = quiet_config(
        modes=2,
        sources={"brightness": 0.7, "g2": 0.05, "indistinguishability": 0.8},
        loss={"input_db": 0, "mzi_db": 0, "output_db": 0},
        detectors={"efficiency": 1.0, "dark_rate_hz": 0},
        delay_lines={"rounds_at_1_over_e": 30.0, "max_rounds": 60},
    )
    device = Device(config, seed=rounds)
    program(device, np.array([math.pi, 0, 0, 0]))  # straight through
    device.handle(f"INP:STAT 0,PHOT;DLIN:ROUT 0,0,0,{rounds};SOUR:ENAB ON;RUN:SHOT 50000".encode())
    assert device.handle(b"SYST:ERR?") == b'0,"No error"'
    counts = np.array(device.handle(b"FETC:COUN?").split(b","), dtype=int)
    _, p1, p2 = SourceModel(brightness=0.7, g2=0.05, indistinguishability=0.8).emission()
    t = math.exp(-rounds / 30)
    expected = p1 * t + p2 * (1 - (1 - t) ** 2)  # one photon, or either of a pair, comes back
    assert counts[0] == 0  # stored: nothing on the first pass
    assert counts[2] / 50000 == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / 50000))


def test_the_published_source_gives_a_hom_visibility_below_one():
    config = parse_config({"modes": 2, "sources": PUBLISHED_SOURCE})
    model = config.sources.model(0)
    dip = click_distribution(BALANCED, [0, 1], model)[0b11]
    reference = click_distribution(np.eye(2), [0, 1], model)[0b11]
    visibility = 1 - 2 * dip / reference
    assert 0.85 < visibility < 0.9  # M - (1 + M) g2 = 0.872 to first order
