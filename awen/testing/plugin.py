"""The pytest plugin (decision 0016 §1): a lab on the simulated chip for a test session, inert until used.

Registered as the ``pytest11`` entry point ``awen``, so it is loaded into every
pytest run: it only adds options, markers and fixtures (no hook that changes a
run), and imports nothing heavy until a fixture is asked for.

| fixture | scope | what |
|---|---|---|
| `awen_lab` | per configuration, session | a `Bench`: `awen up` on a seeded simulated chip, or ``--awen-connect`` |
| `awen_client` | function | ``awen.connect(bench.endpoint)``; its jobs still running at teardown are cancelled |
| `awen_faults` | function | ``bench.sim`` (a `sim.SimControl`), cleared at teardown; skips against a real lab |

Configuration, most specific first: ``@pytest.mark.awen_lab(modes=6, seed=3)``,
the ini options ``awen_modes`` and ``awen_seed``, defaults 4 modes and seed 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from awen.client import Lab
    from sim import SimControl

READY_TIMEOUT = 120.0
FAULTS_ONLY_SIMULATED = "faults are injected only into the simulated chip"
_UP = ("awen: ready", "awen: up")


@dataclasses.dataclass
class Bench:
    """A lab the tests run against: where its door is, and (simulated) the chip's control port."""

    endpoint: str
    data_dir: Path | None = None
    modes: int | None = None
    seed: int | None = None
    sim: SimControl | None = None
    log: Path | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("awen", "awen test benches")
    group.addoption(
        "--awen-connect",
        metavar="URL",
        default=None,
        help="run awen_* tests against the running lab at URL (default: $AWEN_BENCH_CONNECT; else a simulated lab)",
    )
    parser.addini("awen_modes", "modes of the simulated chip (default 4)", default="4")
    parser.addini("awen_seed", "seed of the simulated chip (default 1)", default="1")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "awen_lab(modes=None, seed=None): the simulated lab this test runs against")
    config.addinivalue_line("markers", "awen_hardware: runs only against a real lab (--awen-connect)")


def _connect_url(config: pytest.Config) -> str | None:
    url = config.getoption("--awen-connect", default=None) or os.environ.get("AWEN_BENCH_CONNECT")
    return str(url) if url else None


@pytest.fixture(autouse=True)
def _awen_hardware_only(request: pytest.FixtureRequest) -> None:
    """Skip tests marked ``awen_hardware`` unless a real lab is given (a fixture, not a collection hook)."""
    if request.node.get_closest_marker("awen_hardware") is not None and _connect_url(request.config) is None:
        pytest.skip("needs a real lab: --awen-connect URL (or AWEN_BENCH_CONNECT)")


class _Labs:
    """The session's labs, one per (modes, seed), started when first asked for and stopped at the end."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self._factory = factory
        self._benches: dict[tuple[int, int], Bench] = {}
        self._processes: list[subprocess.Popen[Any]] = []  # in start order: stopped in reverse

    def get(self, modes: int, seed: int) -> Bench:
        key = (modes, seed)
        if key not in self._benches:
            self._benches[key] = self._start(modes, seed)
        return self._benches[key]

    def _start(self, modes: int, seed: int) -> Bench:
        import msgspec

        import sim
        from actors.lab import lab_system, system_toml
        from protocol.paths import ipc_endpoint
        from runtime import RuntimeOptions

        root = self._factory.mktemp(f"awen-lab-{modes}m-s{seed}")
        data_dir = root / "data"
        data_dir.mkdir()
        device_file = root / "chip.toml"
        device_file.write_text(f"modes = {modes}\nseed = {seed}\n")
        sim_log = root / "sim.log"
        serve = ["sim", "serve", "--tcp", "127.0.0.1:0", "--control", "127.0.0.1:0"]
        simulator = self._spawn([*serve, "--seed", str(seed), "--device", str(device_file)], sim_log)
        device_port = control_port = None
        text = ""
        deadline = time.monotonic() + 60.0
        while (device_port is None or control_port is None) and time.monotonic() < deadline:
            if simulator.poll() is not None:
                break
            text = sim_log.read_text(errors="replace")
            found = re.search(r"listening on [^\s:]+:(\d+)", text)
            device_port = int(found.group(1)) if found else None
            found = re.search(r"control on [^\s:]+:(\d+)", text)
            control_port = int(found.group(1)) if found else None
            time.sleep(0.05)
        if device_port is None or control_port is None:
            raise RuntimeError(f"awen sim serve did not start; its output:\n{_tail(sim_log)}")

        factory = data_dir / f"factory-calibration-seed{seed}-{modes}modes.json"
        sim_config = sim.parse_config({"modes": modes})
        factory.write_bytes(msgspec.json.encode(sim.factory_calibration(sim_config, seed)))
        endpoint = ipc_endpoint(data_dir)
        system = lab_system(
            data_dir=data_dir,
            device_url=f"tcp://127.0.0.1:{device_port}",
            factory_calibration=factory,
            runtime=RuntimeOptions(request_timeout=60.0),
            config={"calibration": {"auto": True}},
            door=[endpoint],
        )
        system_file = root / "lab.toml"
        system_file.write_text(system_toml(system))
        log = root / "awen.log"
        up = self._spawn(["up", str(system_file), "--no-http", "--data-dir", str(data_dir)], log)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            text = log.read_text(errors="replace")
            if any(line.startswith(_UP) for line in text.splitlines()):
                break
            if up.poll() is not None:
                raise RuntimeError(f"awen up exited ({up.returncode}) before it was up; its log:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"awen up was not up within {READY_TIMEOUT:g} s; its log:\n{_tail(log)}")
            time.sleep(0.05)
        return Bench(
            endpoint=endpoint,
            data_dir=data_dir,
            modes=modes,
            seed=seed,
            sim=sim.SimControl("127.0.0.1", control_port),
            log=log,
        )

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen[Any]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "awen.cli", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._processes.append(proc)
        return proc

    def close(self) -> None:
        for bench in self._benches.values():
            if bench.sim is not None:
                with contextlib.suppress(OSError):
                    bench.sim.close()
        for proc in reversed(self._processes):  # each lab before its simulator
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _ini_int(config: pytest.Config, name: str) -> int:
    return int(str(config.getini(name)))


@pytest.fixture(scope="session")
def _awen_labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Labs]:
    labs = _Labs(tmp_path_factory)
    try:
        yield labs
    finally:
        labs.close()


@pytest.fixture
def awen_lab(request: pytest.FixtureRequest, _awen_labs: _Labs) -> Bench:
    """The lab this test runs against: the one at ``--awen-connect``, else a simulated one (one per configuration)."""
    url = _connect_url(request.config)
    if url is not None:
        return Bench(endpoint=url)
    marker = request.node.get_closest_marker("awen_lab")
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    modes = int(kwargs.get("modes") or _ini_int(request.config, "awen_modes"))
    seed = int(kwargs["seed"]) if kwargs.get("seed") is not None else _ini_int(request.config, "awen_seed")
    return _awen_labs.get(modes, seed)


@pytest.fixture
def awen_client(awen_lab: Bench) -> Iterator[Lab]:
    """``awen.connect(bench.endpoint)``; jobs it submitted that have not ended are cancelled at teardown."""
    import awen
    from protocol.memory import TERMINAL_STATES

    lab = awen.connect(awen_lab.endpoint)
    submitted: list[Any] = []
    submit = lab.submit
    lock = threading.Lock()

    def remembering(*args: Any, **kwargs: Any) -> Any:
        job = submit(*args, **kwargs)
        with lock:
            submitted.append(job)
        return job

    lab.submit = remembering
    try:
        yield lab
    finally:
        try:
            for job in submitted:
                with contextlib.suppress(Exception):
                    if job.state() not in TERMINAL_STATES:
                        job.cancel()
        finally:
            lab.close()


@pytest.fixture
def awen_faults(awen_lab: Bench) -> Iterator[SimControl]:
    """The simulated chip's control port (`sim.SimControl`); every fault injected is cleared at teardown."""
    if awen_lab.sim is None:
        pytest.skip(FAULTS_ONLY_SIMULATED)
    control = awen_lab.sim
    try:
        yield control
    finally:
        control.clear()
