"""The test-bench plugin's speed (decision 0016 §5): how long a lab's CI waits for awen, next to `awen run`.

Measured in one run, each a median of ``--repeat`` runs:

* ``awen run --modes 4 --shots 1 examples/hom.json`` on a fresh data directory: the
  start-up of awen's own one-shot command (the default lab started, calibrated,
  one job, stopped). The baseline of the start-up figures.
* the plugin's session lab ready (`awen sim serve` + `awen up`, ``awen: ready``,
  first calibration joined), in this process;
* a whole pytest session of one one-shot test, as a lab's CI runs it (python
  and pytest start-up included), in a subprocess;
* a one-shot job test: the median test of a session of ``--tests`` one-shot
  tests, as pytest times it (setup, call, teardown: the client fixture's
  connect and clean-up, the submit and the wait); next to it the same in this
  process without pytest (``awen.connect``, ``submit(shots=1).wait()``,
  ``close``), and the direct simulator's one-shot job (`sim.Device`, the SCPI
  messages the HAL sends) as the floor.

    python benchmarks/testbench.py [--repeat R] [--tests N]
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's directory comes first on sys.path, where benchmarks/hal.py
# would pass for the `hal` package; the repository's root, for `benchmarks.client`.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import awen
from awen.testing.plugin import _Labs, lab_spec
from benchmarks.client import direct
from protocol.circuit import CircuitBuilder

REPO = Path(__file__).resolve().parent.parent
MODES = 4
SEED = 1


def one_shot() -> CircuitBuilder:
    return CircuitBuilder(2, shots=1, name="one-shot").input(0).input(1).bs(0, 1).measure([0, 1], "c")


TESTS = """
import pytest

CIRCUIT = {{"modes": 2, "shots": 1, "ops": [
    {{"op": "input", "mode": 0}}, {{"op": "input", "mode": 1}},
    {{"op": "bs", "modes": [0, 1]}}, {{"op": "measure", "modes": [0, 1], "into": "c"}}]}}


@pytest.mark.parametrize("i", range({n}))
def test_one_shot(awen_client, i):
    assert int(awen_client.submit(CIRCUIT).wait(timeout=60).counts("c").sum()) == 1
"""


def wall(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Seconds a command takes, start to exit; it must succeed."""
    begin = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    took = time.perf_counter() - begin
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return took


def awen_run(tmp: Path) -> float:
    data = Path(tempfile.mkdtemp(dir=tmp, prefix="run-"))
    hom = str(REPO / "examples" / "hom.json")
    cmd = [sys.executable, "-m", "awen.cli", "run", "--modes", str(MODES), "--shots", "1", "--data-dir", str(data), hom]
    return wall(cmd, cwd=tmp, env={**os.environ, "AWEN_DATA_DIR": str(data)})


class _Tmp:
    """tmp_path_factory's one method the labs use, on a directory of this run."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(dir=self.root, prefix=name + "-"))


def session_lab(tmp: Path) -> tuple[float, Any, _Labs]:
    """Seconds until the plugin's lab is ready (calibrated); the lab, left running; its owner."""
    labs = _Labs(_Tmp(tmp))  # type: ignore[arg-type]
    begin = time.perf_counter()
    bench = labs.get(lab_spec(modes=MODES, seed=SEED))
    return time.perf_counter() - begin, bench, labs


def pytest_session(tmp: Path, tests: int) -> tuple[float, list[float]]:
    """A lab's CI session of ``tests`` one-shot tests: its wall time, and each test's but the first's.

    A test's time is pytest's own (JUnit's, setup + call + teardown): the first one's setup starts the lab.
    """
    project = Path(tempfile.mkdtemp(dir=tmp, prefix=f"session{tests}-"))
    (project / "test_bench.py").write_text(TESTS.format(n=tests))
    (project / "pytest.ini").write_text(f"[pytest]\nawen_modes = {MODES}\nawen_seed = {SEED}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(REPO)
    report = ["--junitxml", "junit.xml", "-o", "junit_duration_report=total"]
    took = wall(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *report, "test_bench.py"], project, env
    )
    cases = ElementTree.parse(project / "junit.xml").getroot().iter("testcase")
    return took, [float(case.get("time", "nan")) for case in cases][1:]


def in_process_tests(endpoint: str, n: int) -> list[float]:
    """What a one-shot test does, without pytest: connect, submit, wait, close. Seconds each."""
    times = []
    for i in range(n + 5):
        begin = time.perf_counter()
        with awen.connect(endpoint) as lab:
            assert int(lab.submit(one_shot()).wait(timeout=60).counts("c").sum()) == 1
        if i >= 5:  # the first few warm the plan cache and the imports
            times.append(time.perf_counter() - begin)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each start-up (default 3)")
    parser.add_argument("--tests", type=int, default=100, help="one-shot tests in the long session (default 100)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="awen-bench-testbench-") as name:
        tmp = Path(name)
        run_s = statistics.median(awen_run(tmp) for _ in range(args.repeat))
        ready = []
        for _ in range(args.repeat):
            took, bench, labs = session_lab(tmp)
            ready.append(took)
            if len(ready) < args.repeat:
                labs.close()
        ready_s = statistics.median(ready)
        try:
            per_test = in_process_tests(bench.endpoint, args.tests)
            with awen.connect(bench.endpoint) as lab:
                fits = lab.calibration().fits  # the lab's own, for the direct simulator's voltages
        finally:
            labs.close()
        floor = statistics.median(direct(fits, [one_shot().build()] * 200))
        one = statistics.median(pytest_session(tmp, 1)[0] for _ in range(args.repeat))
        in_pytest = statistics.median(pytest_session(tmp, args.tests)[1])
    p50, p90 = statistics.median(per_test), statistics.quantiles(per_test, n=10)[-1]
    print(f"testbench: {MODES} modes, seed {SEED}; medians of {args.repeat} start-ups, {args.tests} one-shot tests")
    print(f"  awen run, one shot, fresh data dir     {run_s:8.2f} s   (baseline)")
    print(f"  session lab ready (calibrated)         {ready_s:8.2f} s   {ready_s / run_s:5.2f}x awen run")
    print(f"  pytest session of one one-shot test    {one:8.2f} s   {one / run_s:5.2f}x awen run")
    print(f"  one-shot job test, in pytest: p50      {in_pytest * 1e3:8.1f} ms  {in_pytest / floor:7.1f}x direct sim")
    print(f"  one-shot job test, no pytest: p50      {p50 * 1e3:8.1f} ms  {p50 / floor:7.1f}x direct sim")
    print(f"                                p90      {p90 * 1e3:8.1f} ms")
    print(f"  direct simulator, one-shot job         {floor * 1e3:8.2f} ms  (floor)")


if __name__ == "__main__":
    main()
