"""`awen run` as a physicist uses it: every example gives the physics it should, on a chip awen calibrated."""

from __future__ import annotations

import json
import math

import pytest

from .helpers import REPO, awen_cli

pytestmark = pytest.mark.system


def awen_run(example: str, data_dir, *extra: str) -> dict:
    return awen_run_file(f"examples/{example}.json", data_dir, *extra)


def awen_run_file(path, data_dir, *extra: str) -> dict:
    done = awen_cli("run", str(path), "--json", "--data-dir", str(data_dir), *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One store for the module: the first run calibrates the chip, the others reuse the calibration."""
    return tmp_path_factory.mktemp("awen-run")


def test_hom_visibility_agrees_with_the_simulator(data_dir):
    report = awen_run("hom", data_dir)
    assert report["state"] == "completed"
    assert report["calibration"] == 1  # calibrated on the way, as the first run on a fresh store must
    visibility = report["figures"]["visibility"]  # as examples/hom.json names it
    assert visibility["figure"] == "hom_visibility"
    assert abs(visibility["value"] - visibility["expected"]) < 3 * visibility["sigma"] + 0.002
    # A published source's photons (decision 0017): below 1, and what the calibration's sources predict.
    assert visibility["value"] < 0.95
    assert visibility["calibration_version"] == 1
    combined = math.hypot(visibility["sigma"], visibility["calibrated_sigma"])
    assert abs(visibility["value"] - visibility["calibrated"]) < 4 * combined
    assert set(report["registers"]) == {"hom", "reference"}
    assert sum(report["registers"]["hom"]["counts"]) == 20_000


def test_boson_sampling_matches_the_exact_permanents(data_dir):
    report = awen_run("boson_sampling", data_dir)
    assert report["calibration"] == 1  # no second calibration: version 1 is still valid
    fidelity = report["figures"]["fidelity"]
    assert fidelity["events"] > 1000
    assert fidelity["value"] > 0.97


def test_a_stored_photon_comes_back_as_often_as_the_delay_line_allows(data_dir):
    figure = awen_run("delay_line", data_dir)["figures"]["transmission"]
    assert figure["rounds"] == 32
    assert abs(figure["value"] - figure["expected"]) < 4 * figure["sigma"]


def test_a_stored_photon_comes_back_into_the_mode_it_left(data_dir, tmp_path):
    """The delay-line example with one mode: the photon leaves mode 0 for the delay line and comes back into it."""
    circuit = json.loads((REPO / "examples" / "delay_line.json").read_text())
    circuit["modes"] = 1
    (load,) = [op for op in circuit["ops"] if op["op"] == "load"]
    (measure,) = [op for op in circuit["ops"] if op["op"] == "measure"]
    load["mode"], measure["modes"] = 0, [0]
    path = tmp_path / "same_mode.json"
    path.write_text(json.dumps(circuit))
    report = awen_run_file(path, data_dir)
    assert report["state"] == "completed"
    assert sum(report["registers"]["back"]["counts"]) == circuit["shots"]
    figure = report["figures"]["transmission"]  # the second pass is placed where the example's is: the same physics
    assert figure["rounds"] == 32
    assert abs(figure["value"] - figure["expected"]) < 4 * figure["sigma"]


def test_feed_forward_sees_the_photons_bunch(data_dir):
    figure = awen_run("feed_forward", data_dir, "--shots", "10000")["figures"]["conditional"]
    # A HOM pair: a click on mode 0 means both photons went there, so the delay line holds none
    # (but for the few pairs a published source's imperfect photons do not bunch, decision 0017).
    b_given_a0, b_given_a1 = figure["value"]
    assert b_given_a0 > 0.1  # brightness 0.6 and the delay line's loss
    assert b_given_a1 < 0.2 * b_given_a0


def test_a_circuit_named_like_an_example_but_shaped_otherwise_runs_to_its_end(data_dir, tmp_path):
    """The figures are the circuit's declarations, not its name's: a HOM circuit with one register prints none."""
    circuit = json.loads((REPO / "examples" / "hom.json").read_text())
    del circuit["analysis"]
    circuit["ops"] = circuit["ops"][:4]
    circuit["shots"] = 1000
    path = tmp_path / "hom_alone.json"
    path.write_text(json.dumps(circuit))
    report = awen_run_file(path, data_dir)
    assert report["state"] == "completed"
    assert report["figures"] == {}


def test_a_bad_circuit_file_is_refused_with_the_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"modes": 2, "ops": [{"op": "bs", "modes": [0, 5]}]}')
    done = awen_cli("run", str(bad), "--data-dir", str(tmp_path / "d"), timeout=300)
    assert done.returncode == 1
    assert "mode 5 is out of range" in done.stderr


def test_awen_calibrate_prints_the_fit_per_heater_and_plots_it(tmp_path):
    png = tmp_path / "calibration.png"
    data_dir = tmp_path / "data"
    done = awen_cli("calibrate", "--modes", "4", "--points", "6", "--data-dir", str(data_dir), "--plot", str(png))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("calibration version 1 of chip")
    assert sum("theta of MZI" in line and "+-" in line for line in lines) == 6
    assert sum("not measurable by photodiodes" in line for line in lines) == 4
    sources = [line for line in lines if line.strip().startswith("source on input")]
    assert len(sources) == 4  # g2 and M of each source, measured by HBT and HOM (decision 0017 §5)
    assert all("g2 0.0" in line and "indistinguishability 0." in line for line in sources), sources
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000
