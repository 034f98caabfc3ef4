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
READY = "awen: ready"
"""The line `awen up` prints once the lab is ready (awen._notify)."""


@dataclasses.dataclass
class Bench:
    """A lab the tests run against: where its door is, and (simulated) the chip's control port."""

    endpoint: str
    data_dir: Path | None = None
    modes: int | None = None
    seed: int | None = None
    sim: SimControl | None = None
    log: Path | None = None
    device: Path | None = None
    """The simulated chip's device description (TOML), as the simulator runs it."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("awen", "awen test benches")
    group.addoption(
        "--awen-connect",
        metavar="URL",
        default=None,
        help="run awen_* tests against the running lab at URL (default: $AWEN_BENCH_CONNECT; else a simulated lab)",
    )
    parser.addini("awen_modes", "modes of the simulated chip (default: the device file's, else 4)", default="")
    parser.addini("awen_seed", "seed of the simulated chip (default: the device file's, else 1)", default="")
    parser.addini("awen_device", "the simulated chip's device description TOML, from the ini file", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "awen_lab(modes=None, seed=None, device=None, loss=None, faults=None): the simulated lab the test runs on",
    )
    config.addinivalue_line("markers", "awen_hardware: runs only against a real lab (--awen-connect)")


def _connect_url(config: pytest.Config) -> str | None:
    url = config.getoption("--awen-connect", default=None) or os.environ.get("AWEN_BENCH_CONNECT")
    return str(url) if url else None


@pytest.fixture(autouse=True)
def _awen_hardware_only(request: pytest.FixtureRequest) -> None:
    """Skip tests marked ``awen_hardware`` unless a real lab is given (a fixture, not a collection hook)."""
    if request.node.get_closest_marker("awen_hardware") is not None and _connect_url(request.config) is None:
        pytest.skip("needs a real lab: --awen-connect URL (or AWEN_BENCH_CONNECT)")


@dataclasses.dataclass(frozen=True)
class LabSpec:
    """One simulated lab's configuration: its chip's device file as written (so equal specs share a lab)."""

    modes: int
    seed: int
    device: str
    """The device description TOML the simulator runs: the chosen file, with modes, seed, loss and faults applied."""

    def name(self) -> str:
        return f"awen-lab-{self.modes}m-s{self.seed}"


_MARKER_KEYS = ("modes", "seed", "device", "loss", "faults")


def lab_spec(
    *,
    modes: int | None = None,
    seed: int | None = None,
    device: Path | None = None,
    loss: dict[str, float] | None = None,
    faults: list[str | dict[str, Any]] | tuple[str | dict[str, Any], ...] = (),
) -> LabSpec:
    """The lab for these choices: ``device``'s table (if any) with the given values laid over it.

    ``modes`` and ``seed`` not given come from the device file, else 4 and 1. ``loss`` overrides keys of
    its ``[loss]`` table; ``faults`` (``"close:p=0.01"`` as ``awen sim serve --fault`` takes them, or
    tables) are added to its ``[[faults]]``.

    Raises:
        ValueError: a device file that cannot be read, or a value the simulator refuses; the message
            names the file and the key.
    """
    import tomllib

    import msgspec

    import sim
    from protocol import toml_text

    data: dict[str, Any] = {}
    source = "the awen_lab marker"
    if device is not None:
        source = str(device)
        try:
            data = tomllib.loads(device.read_text())
        except OSError as exc:
            raise ValueError(f"cannot read the device file {device}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{device} is not valid TOML: {exc}") from None
    data["modes"] = int(modes if modes is not None else data.get("modes", 4))
    data["seed"] = int(seed if seed is not None else data.get("seed", 1))
    if loss:
        data["loss"] = {**data.get("loss", {}), **loss}
    if faults:
        added = [msgspec.to_builtins(sim.parse_fault(f)) if isinstance(f, str) else dict(f) for f in faults]
        data["faults"] = [*data.get("faults", []), *added]
    sim.parse_config(data, source=source)  # every problem now, named, not in the simulator's log
    return LabSpec(modes=data["modes"], seed=data["seed"], device=toml_text(data))


class _Labs:
    """The session's labs, one per `LabSpec`, started when first asked for and stopped at the end."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self._factory = factory
        self._benches: dict[LabSpec, Bench | str] = {}  # a lab, or why it could not start
        self._processes: list[subprocess.Popen[Any]] = []  # in start order: stopped in reverse

    def get(self, spec: LabSpec) -> Bench:
        if spec not in self._benches:
            try:
                self._benches[spec] = self._start(spec)
            except RuntimeError as exc:
                self._benches[spec] = str(exc)  # every test on this lab fails at once with why, not after a wait
        bench = self._benches[spec]
        if isinstance(bench, str):
            pytest.fail(f"the simulated lab ({spec.modes} modes, seed {spec.seed}) did not start: {bench}", False)
        return bench

    def _start(self, spec: LabSpec) -> Bench:
        import msgspec

        import awen
        import sim
        from actors.lab import lab_system, system_toml
        from protocol.paths import ipc_endpoint
        from runtime import RuntimeOptions

        root = self._factory.mktemp(spec.name())
        data_dir = root / "data"
        data_dir.mkdir()
        device_file = root / "chip.toml"
        device_file.write_text(spec.device)
        sim_log = root / "sim.log"
        serve = ["sim", "serve", "--tcp", "127.0.0.1:0", "--control", "127.0.0.1:0"]
        simulator = self._spawn([*serve, "--seed", str(spec.seed), "--device", str(device_file)], sim_log)
        device_port = control_port = None
        deadline = time.monotonic() + 60.0
        while (device_port is None or control_port is None) and time.monotonic() < deadline:
            if simulator.poll() is not None:
                break
            text = sim_log.read_text(errors="replace")
            found = re.search(r"listening on [^\s:]+:(\d+)", text)
            device_port = int(found.group(1)) if found else None
            found = re.search(r"control on [^\s:]+:(\d+)", text)
            control_port = int(found.group(1)) if found else None
            time.sleep(0.02)
        if device_port is None or control_port is None:
            raise RuntimeError(f"awen sim serve did not start; its output:\n{_tail(sim_log)}")

        factory = data_dir / f"factory-calibration-seed{spec.seed}-{spec.modes}modes.json"
        sim_config = sim.load_config(device_file)
        factory.write_bytes(msgspec.json.encode(sim.factory_calibration(sim_config, spec.seed)))
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
            lines = log.read_text(errors="replace").splitlines()
            if READY in lines:
                break
            if up.poll() is not None:
                raise RuntimeError(f"awen up exited ({up.returncode}) before it was ready; its log:\n{_tail(log)}")
            if time.monotonic() > deadline:
                why = [line for line in lines if line.startswith("awen: not ready")][-1:] or ["(nothing said)"]
                said = f"not ready within {READY_TIMEOUT:g} s: {why[0]}"
                raise RuntimeError(f"awen up was {said}; its log:\n{_tail(log)}")
            time.sleep(0.02)
        # Ready means calibrated or being calibrated: the first test should not pay for the calibration.
        try:
            with awen.connect(endpoint, timeout=10.0) as lab:
                if not lab.calibration_status().valid:
                    lab.calibrate(wait=True)  # joins the one the lab started
        except awen.ClientError as exc:
            raise RuntimeError(f"the lab's first calibration failed: {exc}; its log:\n{_tail(log)}") from exc
        return Bench(
            endpoint=endpoint,
            data_dir=data_dir,
            modes=spec.modes,
            seed=spec.seed,
            sim=sim.SimControl("127.0.0.1", control_port),
            log=log,
            device=device_file,
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
            if isinstance(bench, Bench) and bench.sim is not None:
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
    return _awen_labs.get(_spec_of(request))


def _spec_of(request: pytest.FixtureRequest) -> LabSpec:
    """The lab a test asks for: its ``awen_lab`` markers (the closest wins, key by key), then the ini options."""
    config = request.config
    kwargs: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("awen_lab"))):
        if marker.args:
            pytest.fail(f"@pytest.mark.awen_lab takes keywords only ({', '.join(_MARKER_KEYS)})", False)
        kwargs.update(marker.kwargs)
    unknown = sorted(set(kwargs) - set(_MARKER_KEYS))
    if unknown:
        pytest.fail(f"@pytest.mark.awen_lab: unknown {', '.join(unknown)}; it takes {', '.join(_MARKER_KEYS)}", False)
    ini_dir = config.inipath.parent if config.inipath is not None else config.rootpath
    device: Path | None = None
    if kwargs.get("device") is not None:
        device = Path(request.path).parent / Path(kwargs["device"])  # a marker's path: from its test file
    elif str(config.getini("awen_device")):
        device = ini_dir / Path(str(config.getini("awen_device")))  # an ini option's: from the ini file
    try:
        return lab_spec(
            modes=_int_choice(kwargs.get("modes"), config, "awen_modes"),
            seed=_int_choice(kwargs.get("seed"), config, "awen_seed"),
            device=device,
            loss=kwargs.get("loss"),
            faults=kwargs.get("faults") or (),
        )
    except ValueError as exc:
        pytest.fail(f"awen_lab: {exc}", False)


def _int_choice(value: Any, config: pytest.Config, ini: str) -> int | None:
    """A marker's value, else the ini option's, else None (the device file's, else the default)."""
    if value is None:
        value = str(config.getini(ini)).strip() or None
        if value is None:
            return None
    try:
        return int(value)
    except (TypeError, ValueError):
        pytest.fail(f"awen_lab: {ini.removeprefix('awen_')} must be a whole number, not {value!r}", False)


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
    """The simulated chip's control port (`sim.SimControl`); every fault injected is cleared at teardown.

    An interlock the test tripped is also reset in the lab (``lab.reset_interlock``, the operator's
    step), so that the next test finds the lab dispatching.
    """
    if awen_lab.sim is None:
        pytest.skip(FAULTS_ONLY_SIMULATED)
    control = awen_lab.sim
    try:
        yield control
    finally:
        control.clear()
        _reset_interlocks(awen_lab)


def _reset_interlocks(bench: Bench) -> None:
    import awen

    with awen.connect(bench.endpoint, timeout=10.0) as lab:
        for device in lab.devices():
            if device.state == "interlocked":
                lab.reset_interlock(device.name)
