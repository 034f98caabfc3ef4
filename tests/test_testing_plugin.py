"""The pytest plugin (decision 0016 §1), run as another lab's suite would: a pytester session in its own process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO

pytest_plugins = ["pytester"]

HOM = REPO / "examples" / "hom.json"

INNER = f"""
from concurrent.futures import ThreadPoolExecutor

import pytest

import awen

from awen.client import JobFailed
from awen.testing import assert_figure

HOM = {str(HOM)!r}


def test_a_hom_circuit_on_the_simulated_chip(awen_client, awen_lab):
    assert awen_lab.sim is not None and awen_lab.modes == 4 and awen_lab.seed == 1
    result = awen_client.submit(HOM, shots=2000).wait(timeout=60)
    assert int(result.counts("hom").sum()) == 2000
    visibility = result.figures["visibility"]
    assert_figure(visibility["value"], 1.0, max(visibility["sigma"], 1e-3), k=5)


@pytest.mark.awen_hardware
def test_only_on_the_real_lab(awen_client):
    raise AssertionError("an awen_hardware test ran without --awen-connect")


def test_an_interlock_fails_the_job(awen_client, awen_faults, awen_lab):
    awen_faults.interlock()
    job = awen_client.submit(HOM, shots=2000)
    with pytest.raises(JobFailed, match="interlock"):
        job.wait(timeout=60)
    assert awen_faults.state()["interlock"] is True
    # The operator's reset, from 8 clients at once while a job waits: each is answered, the job runs once.
    awen_faults.clear()
    waiting = awen_client.submit(HOM, shots=500)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: reset_from_a_client_of_its_own(awen_lab.endpoint), range(8)))
    assert int(waiting.wait(timeout=60).counts("hom").sum()) == 500
    assert [d.state for d in awen_client.devices()] == ["connected"]


def reset_from_a_client_of_its_own(endpoint):
    with awen.connect(endpoint) as lab:
        lab.reset_interlock()


def test_the_next_test_finds_the_interlock_reset(awen_client):
    assert int(awen_client.submit(HOM, shots=100).wait(timeout=60).counts("hom").sum()) == 100
"""


@pytest.mark.system
def test_the_fixtures_run_a_lab_on_the_simulated_chip(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bench=INNER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=3, skipped=1)


def test_a_suite_that_uses_no_awen_fixture_runs_as_without_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
        def test_nothing_of_awen(request):
            assert request.config.pluginmanager.has_plugin("awen")  # loaded (the entry point), and idle
            assert "awen_lab" not in request.fixturenames
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_importing_the_plugin_imports_no_trio_and_no_zmq() -> None:
    probe = "import sys, awen.testing.plugin; print(sorted({'trio', 'zmq'} & set(sys.modules)))"
    said = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert said.stdout.strip() == "[]"


CHOSEN = f"""
import pytest

HOM = {str(HOM)!r}


def test_the_ini_device_file(awen_lab, awen_client):
    assert awen_lab.modes == 3 and awen_lab.seed == 5  # the file's modes, the ini's seed
    [device] = awen_client.devices()
    assert device.identity.split(",")[2] == "SN-BENCH-3"  # the file's identity, as the chip reports it


@pytest.mark.awen_lab(modes=2, loss={{"input_db": 40.0}}, faults=["delay:p=0.5,seconds=0.001"])
def test_the_marker_loss_and_faults(awen_lab, awen_client, awen_faults):
    assert awen_lab.modes == 2 and awen_lab.seed == 5
    counts = awen_client.submit(HOM, shots=2000).wait(timeout=60).counts("hom")
    assert counts[0] > 1990  # 40 dB before the chip: hardly a photon arrives
    awen_faults.clear()  # clears what a test injected, never the lab's own faults
    assert [f["kind"] for f in awen_faults.state()["faults"]] == ["delay"]


@pytest.mark.awen_lab(loss={{"input": 3.0}})
def test_a_misspelt_loss(awen_client):
    raise AssertionError("ran on a lab the marker could not describe")
"""


@pytest.mark.system
def test_the_chip_is_chosen_by_an_ini_device_file_and_the_marker(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", **{"chips/bench": 'modes = 3\n\n[identity]\nserial = "SN-BENCH-3"\n'})
    pytester.makeini("[pytest]\nawen_device = chips/bench.toml\nawen_seed = 5\n")
    pytester.makepyfile(test_chosen=CHOSEN)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*awen_lab:*unknown field `input`*loss*"])
