"""The pytest plugin (decision 0016 §1), run as another lab's suite would: a pytester session in its own process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO

pytest_plugins = ["pytester"]

HOM = REPO / "examples" / "hom.json"

INNER = f"""
import pytest

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


def test_an_interlock_fails_the_job(awen_client, awen_faults):
    awen_faults.interlock()
    job = awen_client.submit(HOM, shots=2000)
    with pytest.raises(JobFailed, match="interlock"):
        job.wait(timeout=60)
    assert awen_faults.state()["interlock"] is True
"""


@pytest.mark.system
def test_the_fixtures_run_a_lab_on_the_simulated_chip(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bench=INNER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=2, skipped=1)


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
