"""The daemon (decision 0014 §2, plan step 7): where it is, one per data directory, and its ``awen.json``.

``awen up`` runs as an operator runs it, in a temporary data directory on a free port; ``awen config
check`` on the example lab files and on a file with many problems.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from actors.lab import LAB_ACTORS, system_toml
from awen.daemon import (
    DaemonLock,
    DaemonRunning,
    check_system_file,
    client_endpoints,
    daemon_file_is_stale,
    default_lab,
    door_endpoints,
    door_spec,
    read_daemon_file,
    remove_daemon_file,
    validation_problems,
    with_door_endpoints,
    write_daemon_file,
)
from protocol.paths import (
    DEFAULT_PORT,
    SUN_PATH_MAX,
    daemon_file,
    default_data_dir,
    default_tcp_endpoint,
    ipc_endpoint,
    is_loopback,
    lock_file,
)
from runtime import RestartPolicy

from .helpers import REPO, awen_cli, awen_process, children_of, free_port, wait_gone

EXAMPLES = REPO / "examples"

# --- where the daemon is -----------------------------------------------------------------------


def test_the_data_directory_is_awen_data_dir_else_xdg_else_the_home_directory(tmp_path):
    assert default_data_dir({"AWEN_DATA_DIR": "/srv/awen", "XDG_DATA_HOME": "/x"}) == Path("/srv/awen")
    assert default_data_dir({"XDG_DATA_HOME": "/x"}) == Path("/x/awen")
    assert default_data_dir({"HOME": str(tmp_path)}) == tmp_path / ".local" / "share" / "awen"
    assert default_data_dir({"AWEN_DATA_DIR": "", "HOME": str(tmp_path)}) == tmp_path / ".local/share/awen"


def test_the_memory_actor_keeps_the_same_rule(monkeypatch, tmp_path):
    from actors.memory import default_data_dir as memory_default

    monkeypatch.setenv("AWEN_DATA_DIR", str(tmp_path))
    assert memory_default() == str(tmp_path)
    monkeypatch.delenv("AWEN_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert memory_default() == str(tmp_path / "xdg" / "awen")


def test_the_files_of_a_data_directory(tmp_path):
    assert daemon_file(tmp_path) == tmp_path / "awen.json"
    assert lock_file(tmp_path) == tmp_path / "awen.lock"
    assert ipc_endpoint(tmp_path) == f"ipc://{tmp_path}/awen.sock"
    assert default_tcp_endpoint() == f"tcp://127.0.0.1:{DEFAULT_PORT}" == "tcp://127.0.0.1:7460"


def test_an_ipc_path_too_long_for_a_unix_socket_moves_to_the_runtime_directory(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(str(deep / "awen.sock")) > SUN_PATH_MAX
    moved = ipc_endpoint(deep, {"XDG_RUNTIME_DIR": "/run/user/1000"})
    assert moved.startswith("ipc:///run/user/1000/awen-")
    assert moved.endswith(".sock")
    assert moved == ipc_endpoint(deep, {"XDG_RUNTIME_DIR": "/run/user/1000"})  # the same directory, the same socket
    assert len(moved.removeprefix("ipc:///run/user/1000/awen-").removesuffix(".sock")) == 12
    assert moved != ipc_endpoint(deep / "f", {"XDG_RUNTIME_DIR": "/run/user/1000"})
    in_tmp = ipc_endpoint(deep, {})
    assert in_tmp.startswith("ipc://")
    assert "/awen-" in in_tmp
    assert len(in_tmp) - len("ipc://") <= SUN_PATH_MAX
    # exactly at the limit it stays where it is
    exact = Path("/" + "x" * (SUN_PATH_MAX - len("/awen.sock") - 1))
    assert len(str(exact / "awen.sock")) == SUN_PATH_MAX
    assert ipc_endpoint(exact, {"XDG_RUNTIME_DIR": "/run"}) == f"ipc://{exact}/awen.sock"


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("tcp://127.0.0.1:7460", True),
        ("tcp://127.3.2.1:7460", True),
        ("tcp://[::1]:7460", True),
        ("tcp://localhost:7460", True),
        ("ipc:///tmp/awen.sock", True),
        ("tcp://0.0.0.0:7460", False),
        ("tcp://*:7460", False),
        ("tcp://[::]:7460", False),
        ("tcp://192.168.1.50:7460", False),
        ("tcp://eth0:7460", False),
        ("tcp://lab.example.org:7460", False),
        ("udp://127.0.0.1:7460", False),
        ("inproc://door", False),
    ],
)
def test_only_loopback_and_ipc_are_loopback(address, loopback):
    assert is_loopback(address) is loopback


# --- the lock and awen.json --------------------------------------------------------------------


def test_one_lock_per_data_directory_and_the_refusal_names_its_holder(tmp_path):
    assert daemon_file_is_stale(tmp_path)  # no lock file at all
    with DaemonLock(tmp_path):
        assert lock_file(tmp_path).read_text().strip() == str(os.getpid())
        assert not daemon_file_is_stale(tmp_path)
        with pytest.raises(DaemonRunning) as refused, DaemonLock(tmp_path):
            pass
        assert str(refused.value) == (
            f"another awen is running on {tmp_path} (pid {os.getpid()}); "
            "stop it or use another data directory (AWEN_DATA_DIR)"
        )
    assert daemon_file_is_stale(tmp_path)
    with DaemonLock(tmp_path):  # released: taken again
        pass


def test_awen_json_is_written_whole_read_back_and_removed(tmp_path):
    assert read_daemon_file(tmp_path) is None
    info = {"pid": 12, "endpoints": ["ipc:///x"], "lab": "default"}
    assert write_daemon_file(tmp_path, info) == tmp_path / "awen.json"
    assert read_daemon_file(tmp_path) == info
    assert [p.name for p in tmp_path.iterdir()] == ["awen.json"]  # no temporary file left beside it
    remove_daemon_file(tmp_path)
    remove_daemon_file(tmp_path)
    assert read_daemon_file(tmp_path) is None
    (tmp_path / "awen.json").write_text("[1, 2")
    assert read_daemon_file(tmp_path) is None


def test_the_default_lab_is_the_standard_lab_on_a_seeded_chip_calibrating_at_start(tmp_path):
    system = default_lab(tmp_path / "data", seed=3, modes=4, port=7999)
    config = {a.name: a.config for a in system.actors}
    assert config["memory"]["data_dir"] == str(tmp_path / "data")
    assert config["hal"]["devices"][0]["url"] == "sim://?seed=3&modes=4"
    assert config["calibration"]["auto"] is True
    assert Path(config["calibration"]["factory"]).is_file()
    assert system.run_dir is None  # a fresh temporary directory at each start
    if door_spec(system) is not None:
        assert config["door"]["endpoints"] == [ipc_endpoint(tmp_path / "data"), "tcp://127.0.0.1:7999"]
        assert door_endpoints(system, tmp_path / "data") == config["door"]["endpoints"]
    assert [a.name for a in system.actors if a.name != "door"] == list(LAB_ACTORS)
    assert client_endpoints(tmp_path, listen=["tcp://127.0.0.2:1"]) == [ipc_endpoint(tmp_path), "tcp://127.0.0.2:1"]
    assert client_endpoints(tmp_path, tcp=False) == [ipc_endpoint(tmp_path)]


# --- awen up -----------------------------------------------------------------------------------


def expected_endpoints(data_dir: Path, port: int) -> list[str]:
    """The door's endpoints, once the standard lab has a door; none before."""
    return client_endpoints(data_dir, port=port) if door_spec(default_lab(data_dir, port=port)) else []


def wait_for_file(path: Path, seconds: float = 15.0) -> dict:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {seconds:g} s"
        time.sleep(0.05)
    return json.loads(path.read_text())


@pytest.mark.system
def test_awen_up_writes_awen_json_refuses_a_second_and_removes_it_on_sigterm(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("AWEN_DATA_DIR", str(data))
    port = free_port()
    http = f"127.0.0.1:{free_port()}"  # not the default 7461: a lab running on this machine may hold it
    with awen_process("up", "--port", str(port), "--modes", "4", "--http", http) as (proc, out):
        line = out.until("awen: up", timeout=30)
        assert f"pid {proc.pid}" in line
        assert f"data {data}" in line
        info = json.loads((data / "awen.json").read_text())  # written before the line
        assert info["pid"] == proc.pid
        assert info["data_dir"] == str(data)
        assert info["endpoints"] == expected_endpoints(data, port)
        assert set(info) == {
            "awen",
            "protocol",
            "pid",
            "started",
            "data_dir",
            "lab",
            "endpoints",
            "system_file",
            "http",
        }
        assert info["http"] == f"http://{http}"  # the web actor's (decision 0015 §1)
        assert Path(info["system_file"]).is_file()
        assert not daemon_file_is_stale(data)

        second = awen_cli("up", "--port", str(free_port()), "--modes", "4", "--no-http", timeout=30)
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"awen: error: another awen is running on {data} (pid {proc.pid}); "
            "stop it or use another data directory (AWEN_DATA_DIR)"
        )
        assert (data / "awen.json").exists()  # the refused one leaves the running one's file alone

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert "Traceback" not in "\n".join(out.seen + out.rest(timeout=5))
    assert not (data / "awen.json").exists()
    assert daemon_file_is_stale(data)


NO_HTTP = ("--modes", "4", "--no-http")
"""A small simulated chip, no web actor: the default HTTP port (7461) may be held by a lab on this machine."""


@pytest.mark.system
def test_kill_9_leaves_awen_json_stale_and_a_new_awen_up_starts(tmp_path):
    data = tmp_path / "data"
    with awen_process("up", "--data-dir", str(data), "--port", str(free_port()), *NO_HTTP) as (proc, out):
        out.until("awen: up", timeout=30)
        actors = children_of(proc.pid)
        proc.kill()
        proc.wait(timeout=10)
    try:
        left = read_daemon_file(data)
        assert left is not None
        assert left["pid"] == proc.pid
        assert daemon_file_is_stale(data)
    finally:
        wait_gone(actors, 10)  # the actors see their supervisor gone within a heartbeat or two
    with awen_process("up", "--data-dir", str(data), "--port", str(free_port()), *NO_HTTP) as (again, out):
        out.until("awen: up", timeout=30)
        assert json.loads((data / "awen.json").read_text())["pid"] == again.pid
        assert not daemon_file_is_stale(data)
        again.send_signal(signal.SIGINT)
        assert again.wait(timeout=15) == 0
    assert not (data / "awen.json").exists()


@pytest.mark.parametrize("url", ["tcp://0.0.0.0:7460", "tcp://192.168.1.50:7460", "tcp://*:7460"])
def test_a_listen_address_beyond_loopback_is_refused_with_exit_2(tmp_path, url):
    done = awen_cli("up", "--data-dir", str(tmp_path), "--listen", "tcp://127.0.0.1:7461", "--listen", url, timeout=30)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"awen: error: refusing to listen on {url}: clients are not authenticated yet, so awen listens only on "
        "loopback and ipc; reach it from elsewhere with ssh -L 7460:127.0.0.1:7460 HOST"
    ]
    assert not (tmp_path / "awen.json").exists()
    assert not (tmp_path / "awen.lock").exists()


def test_awen_up_on_a_file_that_is_wrong_exits_2_in_one_line(tmp_path):
    bad = tmp_path / "lab.toml"
    bad.write_text("[[actor]]\nname = 'x'\nfactory = 'nowhere:Nothing'\n")
    done = awen_cli("up", str(bad), "--data-dir", str(tmp_path / "data"), timeout=30)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert "nowhere" in done.stderr
    assert "Traceback" not in done.stderr


# --- awen config check -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lab-tcp.toml", "lab-serial.toml"])
def test_the_example_lab_files_pass_the_check(name):
    done = awen_cli("config", "check", str(EXAMPLES / name), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{EXAMPLES / name}: ok (6 actors)"
    for line in done.stderr.splitlines():  # at most: the factory calibration is not installed on this machine
        assert line.startswith(f"{EXAMPLES / name}: warning: actor 'calibration': factory:")


BROKEN = """
log_level = "loud"
colour = "blue"

[runtime]
heartbeat_interval = "fast"

[[actor]]
name = "memory"
factory = "actors.memory:MemoryActor"
config = { data_dir = 3, synchronous = "sometimes", nonsense = 1 }

[[actor]]
name = "hal"
factory = "actors.hal:HalActor"
config = { devices = [{ name = "chip", url = "ftp://x" }, { name = "b", url = "tcp://host:5025", v_max = -1 }] }

[[actor]]
name = "scheduler"
factory = "actors.nothing:Nope"

[[actor]]
name = "calibration"
factory = "actors.calibration:CalibrationActor"
restart = { max_restarts = -1 }
config = { points = "ten", factory = "/nowhere/factory.json" }
"""


def test_a_broken_file_gets_every_problem_at_once_with_exit_2(tmp_path):
    path = tmp_path / "lab.toml"
    path.write_text(BROKEN)
    done = awen_cli("config", "check", str(path), timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines)
    said = "\n".join(lines)
    for expected in [
        "log_level: Invalid enum value 'loud'",
        "colour: unknown setting",
        "runtime.heartbeat_interval: Expected `float`, got `str`",
        "actor 'memory': data_dir: Expected `str`, got `int`",
        "actor 'memory': synchronous: Invalid enum value 'sometimes'",
        "actor 'memory': nonsense: unknown setting",
        "actor 'hal': devices[0].url: 'ftp://x': a device URL starts with tcp://, serial:// or sim://",
        "actor 'hal': devices[1].v_max:",
        "actor 'scheduler': factory 'actors.nothing:Nope': cannot import actors.nothing",
        "actor 'calibration': restart.max_restarts: Expected `int` >= 0",
        "actor 'calibration': points: Expected `int`, got `str`",
        "warning: actor 'calibration': factory: the factory calibration /nowhere/factory.json does not exist",
    ]:
        assert expected in said
    assert len(lines) == 12


def test_a_file_that_is_not_toml_or_not_there_is_one_problem(tmp_path):
    (tmp_path / "bad.toml").write_text("x = [\n")
    assert [p.split(":")[0] for p in check_system_file(tmp_path / "bad.toml").problems] == ["not valid TOML"]
    assert check_system_file(tmp_path / "none.toml").problems == ["cannot read it: No such file or directory"]
    done = awen_cli("config", "check", str(tmp_path / "bad.toml"), timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1


def test_every_problem_of_a_struct_is_found_not_only_the_first():
    found = validation_problems({"max_restarts": "x", "window": -1, "spare": 1, "give_up": "no"}, RestartPolicy)
    assert sorted(found) == [
        "give_up: Expected `bool`, got `str`",
        "max_restarts: Expected `int`, got `str`",
        "spare: unknown setting",
        "window: Expected `float` > 0.0",
    ]
    assert validation_problems({"window": 5}, RestartPolicy) == []
    assert validation_problems([1], RestartPolicy) == ["expected a table, got list"]


@pytest.mark.system
def test_awen_up_of_a_file_keeps_its_data_directory_and_door(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    lab = default_lab(data, modes=4, port=port)
    path = tmp_path / "lab.toml"
    path.write_text(system_toml(lab))
    with awen_process("up", str(path)) as (proc, out):
        out.until("awen: up", timeout=30)
        info = json.loads((data / "awen.json").read_text())
        assert info["pid"] == proc.pid
        assert info["endpoints"] == door_endpoints(lab, data)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert not (data / "awen.json").exists()
    if door_spec(lab) is not None:  # a door the file opens to the network is refused as --listen is
        path.write_text(system_toml(with_door_endpoints(lab, ["tcp://0.0.0.0:7460"])))
        done = awen_cli("up", str(path), timeout=30)
        assert done.returncode == 2
        assert done.stderr.startswith("awen: error: refusing to listen on tcp://0.0.0.0:7460: clients are not")


def test_a_port_another_program_holds_is_named_and_awen_up_exits_1(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = awen_cli("up", "--data-dir", str(tmp_path), "--port", str(port), "--no-http", timeout=30)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"awen: error: 127.0.0.1:{port} in use (another awen, or another program): stop it, or choose other ports "
        "with --port and --http (or --no-http)"
    ]
    assert not (tmp_path / "awen.json").exists()
