"""examples/testbench, another lab's project, run as that lab runs it (decision 0016 §4).

awen is built into a wheel and installed, with the project, into a fresh virtual environment that has
never seen this checkout; the project's own tests then run with that environment's pytest in a
subprocess: first on the simulated chip the plugin starts, then with ``--awen-connect`` against a lab
started by that environment's ``awen up``, as they would run against the real lab.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.helpers import REPO, awen_process, free_port

EXAMPLE = REPO / "examples" / "testbench"
NOT_FOR_THE_WHEEL = shutil.ignore_patterns(
    ".venv", ".git", "*cache*", "__pycache__", "test-artifacts", "build", "dist", "*.egg-info", "examples"
)

pytestmark = pytest.mark.system


def _run(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A command as a lab's CI runs it: none of this suite's environment that says where awen is."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("AWEN_", "PYTEST_"))}
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _outcomes(run: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """pytest's summary line as counts: {"passed": 11, "skipped": 1}."""
    last = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed)", last)}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the fresh environment's python, the lab's project): awen from its wheel, the project from its copy."""
    root = tmp_path_factory.mktemp("testbench")
    source = root / "awen-source"
    shutil.copytree(REPO, source, ignore=NOT_FOR_THE_WHEEL)  # a build writes into its tree: not into ours
    built = _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", root / "wheels", source, cwd=root)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (root / "wheels").glob("awen-*.whl")
    project = root / "lakeside"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    done = _run(python, "-m", "pip", "install", "--quiet", wheel, f"{project}[test]", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    where = _run(python, "-c", "import awen, lakeside; print(awen.__file__); print(lakeside.__file__)", cwd=project)
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert Path(path).is_relative_to(root / "venv"), f"imported from {path}, not from the installed packages"
    return python, project


def test_the_lab_s_tests_pass_on_the_simulated_chip(installed: tuple[Path, Path]) -> None:
    python, project = installed
    run = _run(python, "-m", "pytest", "-p", "no:cacheprovider", "-rs", cwd=project)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert _outcomes(run) == {"passed": 11, "skipped": 1}, run.stdout[-3000:]
    assert "needs a real lab: --awen-connect URL" in run.stdout  # the hardware-only test, and why it skipped


def test_the_same_tests_against_a_running_lab(installed: tuple[Path, Path], tmp_path: Path) -> None:
    python, project = installed
    port = free_port()
    up = ("up", "--modes", "4", "--port", str(port), "--no-http", "--data-dir", str(tmp_path / "lab"))
    with awen_process(*up, python=python, cwd=tmp_path) as (_proc, out):
        out.until("awen: ready", timeout=120)
        run = _run(
            python,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rs",
            "--awen-connect",
            f"tcp://127.0.0.1:{port}",
            cwd=project,
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    # The fault tests skip (faults are the simulator's), the hardware test runs: it is a PX-8.
    assert _outcomes(run) == {"passed": 9, "skipped": 3}, run.stdout[-3000:]
    assert run.stdout.count("faults are injected only into the simulated chip") == 3
