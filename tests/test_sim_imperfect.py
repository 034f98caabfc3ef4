"""An imperfect chip's detectors and drift (decision 0017 §3-4): timing jitter, and sources whose M walks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocol.scpi import unblock
from sim import Device, SimConfig, SimConfigError, SourceModel, chip_of, click_distribution, parse_config
from tests.test_sim_physics import program, quiet_config

HOUR = 3600.0
STRAIGHT = np.array([math.pi, 0, 0, 0])  # a 2-mode chip's MZI at theta pi: each input leaves by its own output
BALANCED = np.array([math.pi / 2, 0, 0, 0])  # a 50:50 MZI: Hong-Ou-Mandel
IDEAL = {"brightness": 1.0, "g2": 0.0, "indistinguishability": 1.0, "indistinguishability_drift_per_sqrt_hour": 0.0}
"""One photon per pulse, identical and steady (the default sources are a published quantum dot's, drifting)."""


def in_gate(gate_s: float, jitter_s: float) -> float:
    """The chance a click lands within half the gate of the pulse, for Gaussian jitter of that rms."""
    return math.erf(gate_s / (2 * math.sqrt(2) * jitter_s))


def lossless(detectors: dict[str, object], sources: dict[str, object] | None = None) -> SimConfig:
    """Two modes, no loss, perfect detectors with no dark counts: every photon clicks, but for jitter."""
    return quiet_config(
        modes=2,
        loss={"input_db": 0, "mzi_db": 0, "output_db": 0},
        detectors={"efficiency": 1.0, "dark_rate_hz": 0, **detectors},
        sources={**IDEAL, **(sources or {})},
    )


def read_patterns(device: Device) -> np.ndarray:
    """The last run's patterns, one row per shot (``FETC:PATT?`` is a definite-length block)."""
    reply = device.handle(b"FETC:PATT?")
    assert reply is not None
    return np.frombuffer(unblock(reply), dtype=np.uint8).reshape(-1, device.config.modes)


def shots(device: Device, setting: np.ndarray, inputs: tuple[int, ...], n: int) -> np.ndarray:
    """The threshold patterns of ``n`` shots with a photon on each of ``inputs``, one row per shot."""
    program(device, setting)
    device.handle(b"INP:CLE;" + b";".join(f"INP:STAT {j},PHOT".encode() for j in inputs) + b";SOUR:ENAB ON")
    device.handle(f"RUN:SHOT {n}".encode())
    assert device.handle(b"SYST:ERR?") == b'0,"No error"'
    patterns = read_patterns(device)
    assert len(patterns) == n
    return patterns


def within(measured: float, p: float, n: int) -> bool:
    """``measured`` (a fraction of ``n`` trials) is within 4 sigma of ``p``."""
    return abs(measured - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12


# --- jitter ---------------------------------------------------------------------------------------


def test_a_narrow_gate_loses_one_photon_s_clicks_by_the_erf_of_its_jitter() -> None:
    n = 100_000
    narrow = {"gate_s": 100e-12}
    sharp = shots(Device(lossless(detectors={**narrow, "jitter_s": 0}), seed=1), STRAIGHT, (0,), n)
    jittery = shots(Device(lossless(detectors={**narrow, "jitter_s": 50e-12}), seed=1), STRAIGHT, (0,), n)
    assert sharp[:, 0].sum() == n  # no jitter: a lossless chip clicks on every shot
    factor = in_gate(100e-12, 50e-12)
    assert factor == pytest.approx(0.6827, abs=1e-4)  # +-1 sigma: the gate is two rms wide
    assert within(jittery[:, 0].mean(), factor, n)
    assert jittery[:, 1].sum() == 0  # a lost click is lost, not moved to another detector


@pytest.mark.parametrize("indistinguishability", [1.0, 0.5])  # the ideal sampler, then the exact distribution
def test_coincidences_go_as_the_square_of_the_jitter_factor_and_singles_as_it(indistinguishability: float) -> None:
    n = 100_000
    config = lossless(
        detectors={"gate_s": 100e-12, "jitter_s": 50e-12}, sources={"indistinguishability": indistinguishability}
    )
    patterns = shots(Device(config, seed=2), STRAIGHT, (0, 1), n)  # no interference: each detector sees its own photon
    factor = in_gate(100e-12, 50e-12)
    both = float(np.mean((patterns[:, 0] == 1) & (patterns[:, 1] == 1)))
    assert within(both, factor**2, n)
    assert not within(both, factor, n)  # 0.47, not 0.68: a user sees it in the coincidences first
    for mode in (0, 1):
        assert within(float(patterns[:, mode].mean()), factor, n)


def test_the_default_gate_loses_nothing_to_the_default_jitter() -> None:
    defaults = SimConfig().detectors
    assert (defaults.gate_s, defaults.jitter_s) == (1e-9, 50e-12)
    assert in_gate(defaults.gate_s, defaults.jitter_s) > 1 - 1e-15  # the gate is 20 rms wide
    # With realistic losses the same seed gives the very same shots with the default jitter and with none.
    script = [b"INP:STAT 0,PHOT;INP:STAT 1,PHOT;SOUR:ENAB ON", b"RUN:SHOT 20000", b"FETC:PATT?", b"FETC:COUN?"]

    def replies(jitter_s: float) -> list[bytes | None]:
        device = Device(quiet_config(modes=2, detectors={"jitter_s": jitter_s}), seed=3)
        program(device, BALANCED)
        return [device.handle(line) for line in script]

    default = replies(50e-12)
    assert default == replies(0.0)
    counts = default[-1]
    assert counts is not None
    assert 0 < int(counts.split(b",")[0]) < 20_000  # loss, not the gate


@pytest.mark.parametrize("jitter", [-1e-12, "50ps", None])
def test_a_bad_jitter_is_refused_naming_the_field(jitter: object) -> None:
    with pytest.raises(SimConfigError, match=r"detectors\.jitter_s"):
        parse_config({"modes": 2, "detectors": {"jitter_s": jitter}})


# --- drift of the sources' indistinguishability --------------------------------------------------


def drifting(rate: float, modes: int = 2, m_value: float = 0.9, heater_drift: float = 0.0) -> SimConfig:
    return quiet_config(
        modes=modes,
        heaters={"drift_rad_per_sqrt_hour": heater_drift},
        sources={**IDEAL, "indistinguishability": m_value, "indistinguishability_drift_per_sqrt_hour": rate},
    )


def indistinguishabilities(device: Device) -> list[float]:
    return [device.chip.source(mode, device.clock).indistinguishability for mode in range(device.config.modes)]


def test_the_default_drift_rate_is_the_decision_s() -> None:
    assert SimConfig().sources.indistinguishability_drift_per_sqrt_hour == 0.005
    with pytest.raises(SimConfigError, match=r"sources\.indistinguishability_drift_per_sqrt_hour"):
        parse_config({"sources": {"indistinguishability_drift_per_sqrt_hour": -0.01}})


def test_the_same_seed_gives_the_same_m_after_the_same_device_time() -> None:
    def after(seed: int) -> list[float]:
        device = Device(drifting(0.05, modes=4), seed=seed)
        for hours in (1.0, 10.0, 100.0):
            device.advance(hours * HOUR)
            indistinguishabilities(device)
        return indistinguishabilities(device)

    first = after(4)
    assert first == after(4)
    assert first != after(5)
    assert all(abs(m - 0.9) > 1e-6 for m in first)  # it did move
    assert len(set(first)) == 4  # each input's source walks on its own


def test_m_stays_a_fraction_over_ten_thousand_hours_of_fast_drift() -> None:
    chip = chip_of(drifting(0.5, modes=3, m_value=0.95), seed=6)
    seen = []
    for hours in np.arange(10.0, 10_000.1, 10.0):  # 1000 steps; the walk's spread is 50 at the end
        for mode in range(3):
            model = chip.source(mode, hours * HOUR)
            assert 0.0 <= model.indistinguishability <= 1.0
            seen.append(model.indistinguishability)
    # Reflected, not stuck at a bound: it wanders over the whole range.
    assert min(seen) < 0.05
    assert max(seen) > 0.95
    assert 0.3 < float(np.mean(seen)) < 0.7


def test_m_walks_by_the_rate_per_square_root_of_an_hour() -> None:
    # M = 0.5 +- 0.1 after 100 h at 0.01 per sqrt(hour), far from the bounds: the spread over chips and inputs.
    rate, hours, modes = 0.01, 100.0, 8
    moved = []
    for seed in range(50):
        chip = chip_of(drifting(rate, modes=modes, m_value=0.5), seed=seed)
        steps = [hours] if seed % 2 else [float(h) for h in range(1, int(hours) + 1)]  # one step or 100
        for h in steps:
            chip.source(0, h * HOUR)
        moved += [chip.source(mode, hours * HOUR).indistinguishability - 0.5 for mode in range(modes)]
    spread = float(np.std(moved))
    expected = rate * math.sqrt(hours)
    assert spread == pytest.approx(expected, rel=4 / math.sqrt(2 * len(moved)))
    assert abs(float(np.mean(moved))) < 4 * expected / math.sqrt(len(moved))


def test_the_phases_drift_the_same_whether_the_sources_drift_or_not() -> None:
    def phases(rate: float) -> list[np.ndarray]:
        device = Device(drifting(rate, modes=3, heater_drift=0.5), seed=7)
        seen = [device.chip.phases(device.clock).copy()]
        device.handle(b"INP:STAT 0,PHOT;INP:STAT 2,PHOT;SOUR:ENAB ON")
        for hours in (0.5, 3.0, 20.0):
            device.advance(hours * HOUR)
            device.handle(b"RUN:SHOT 1000")  # draws the sources' drift too
            indistinguishabilities(device)
            seen.append(device.chip.phases(device.clock).copy())
        return seen

    still, walking = phases(0.0), phases(0.05)
    for a, b in zip(still, walking, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.std(still[-1] - still[0]) > 0.5  # and they did drift


def test_with_no_drift_rate_m_stays_put() -> None:
    device = Device(drifting(0.0, modes=3, m_value=0.8, heater_drift=0.5), seed=8)
    device.handle(b"INP:STAT 0,PHOT;INP:STAT 1,PHOT;SOUR:ENAB ON;RUN:SHOT 1000")
    device.advance(10_000 * HOUR)
    device.handle(b"RUN:SHOT 1000")
    for mode in range(3):
        assert device.chip.source(mode, device.clock) == SourceModel(indistinguishability=0.8)
        assert device.chip.source(mode, device.clock) == device.config.sources.model(mode)


def hom_coincidences(device: Device, n: int) -> tuple[float, float, list[SourceModel]]:
    """Measured coincidences at a balanced MZI, what the sources at that moment predict, and those sources."""
    program(device, BALANCED)
    device.handle(b"INP:STAT 0,PHOT;INP:STAT 1,PHOT;SOUR:ENAB ON")
    at = device.clock + device.config.command_s  # the time RUN:SHOT runs at
    sources = [device.chip.source(mode, at) for mode in (0, 1)]
    expected = click_distribution(device.chip.unitary(at), [0, 1], sources)[0b11]  # lossless, no dark counts
    device.handle(f"RUN:SHOT {n}".encode())
    assert device.handle(b"SYST:ERR?") == b'0,"No error"'
    patterns = read_patterns(device)
    assert len(patterns) == n
    return float(np.mean((patterns[:, 0] == 1) & (patterns[:, 1] == 1))), float(expected), sources


def test_the_hom_visibility_follows_the_drifted_m() -> None:
    n = 100_000
    config = quiet_config(
        modes=2,
        loss={"input_db": 0, "mzi_db": 0, "output_db": 0},
        detectors={"efficiency": 1.0, "dark_rate_hz": 0},
        sources={**IDEAL, "indistinguishability": 0.9, "indistinguishability_drift_per_sqrt_hour": 0.02},
    )
    device = Device(config, seed=9)
    before, expected_before, sources = hom_coincidences(device, n)
    assert [source.indistinguishability for source in sources] == pytest.approx([0.9, 0.9], abs=1e-4)
    assert expected_before == pytest.approx((1 - 0.9) / 2, abs=1e-4)  # V = M: a tenth of a second has not moved it
    device.advance(500 * HOUR)  # the walk's spread is now 0.45
    after, expected_after, sources = hom_coincidences(device, n)
    m0, m1 = (source.indistinguishability for source in sources)
    # Lossless and bright, the reference run always coincides: V = 1 - 2 P(11) = sqrt(M0 M1).
    assert expected_after == pytest.approx((1 - math.sqrt(m0 * m1)) / 2, abs=1e-12)
    assert within(before, expected_before, n)
    assert within(after, expected_after, n)
    assert not within(after, expected_before, n)  # a user notices: the visibility moved
    visibility_before, visibility_after = 1 - 2 * before, 1 - 2 * after
    assert abs(visibility_after - visibility_before) > 0.05
