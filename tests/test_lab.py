"""The standard lab system (actors.lab): what it runs, what callers vary, and its file read back as written."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.lab import LAB_ACTORS, lab_system, system_toml
from runtime import RestartPolicy, RuntimeOptions, load_system, parse_system


def test_the_lab_is_the_five_actors_on_one_device_in_start_order(tmp_path):
    system = lab_system(data_dir=tmp_path / "data", device_url="sim://?seed=1&modes=8", factory_calibration="f.json")
    assert [(a.name, a.factory) for a in system.actors] == [
        ("memory", "actors.memory:MemoryActor"),
        ("hal", "actors.hal:HalActor"),
        ("scheduler", "actors.scheduler:SchedulerActor"),
        ("executor", "actors.executor:ExecutorActor"),
        ("calibration", "actors.calibration:CalibrationActor"),
    ]
    config = {a.name: a.config for a in system.actors}
    assert config["memory"] == {"data_dir": str(tmp_path / "data")}
    assert config["hal"] == {"devices": [{"name": "chip", "url": "sim://?seed=1&modes=8"}]}
    assert config["calibration"] == {"device": "chip", "factory": "f.json"}
    assert config["executor"] == config["scheduler"] == {"device": "chip"}
    assert (system.transport, system.log_level, system.run_dir) == ("ipc", "info", None)
    assert system.runtime == RuntimeOptions()


def test_what_callers_vary_reaches_the_actors_they_name(tmp_path):
    system = lab_system(
        data_dir=tmp_path,
        device_url="serial:///dev/ttyUSB0",
        device="bench",
        device_options={"watchdog_s": 0},
        actors=("memory", "hal", "scheduler", "executor"),
        log_level="warning",
        runtime=RuntimeOptions(heartbeat_interval=0.2, request_timeout=20.0),
        run_dir=tmp_path / "run",
        restart=RestartPolicy(max_restarts=3, window=60, backoff=0.05),
        transport="tcp",
        config={"executor": {"batch_shots": 2000}, "memory": {"synchronous": "normal"}},
    )
    config = {a.name: a.config for a in system.actors}
    assert list(config) == ["memory", "hal", "scheduler", "executor"]
    assert config["hal"] == {"devices": [{"name": "bench", "url": "serial:///dev/ttyUSB0", "watchdog_s": 0}]}
    assert config["executor"] == {"device": "bench", "batch_shots": 2000}
    assert config["memory"] == {"data_dir": str(tmp_path), "synchronous": "normal"}
    assert {a.restart for a in system.actors} == {RestartPolicy(max_restarts=3, window=60, backoff=0.05)}
    assert (system.runtime.heartbeat_interval, system.runtime.request_timeout) == (0.2, 20.0)
    assert (system.transport, system.log_level, system.run_dir) == ("tcp", "warning", str(tmp_path / "run"))


def test_an_actor_the_lab_does_not_have_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="not actors of this lab: telescope"):
        lab_system(data_dir=tmp_path, device_url="sim://", actors=("memory", "telescope"))
    with pytest.raises(ValueError, match="not actors of this lab: calibration"):
        lab_system(data_dir=tmp_path, device_url="sim://", actors=("memory",), config={"calibration": {}})


def test_the_system_file_reads_back_as_the_system_it_was_written_from(tmp_path):
    system = lab_system(
        data_dir=tmp_path / "data",
        device_url="sim://?seed=3&modes=4",
        factory_calibration=tmp_path / "factory.json",
        device_options={"timeout_s": 1.5, "limits": {"power_budget_w": 0.5}},
        runtime=RuntimeOptions(heartbeat_interval=1.0, liveness=10, request_timeout=60.0, max_frame_bytes=8388608),
        run_dir=tmp_path / "run",
        restart=RestartPolicy(max_restarts=1000, window=60, backoff=0.1, backoff_max=1.0),
        log_level="debug",
    )
    path = tmp_path / "system.toml"
    path.write_text(system_toml(system))
    assert load_system(path) == system
    assert "[[actor]]" in path.read_text()


@given(
    text=st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40),
    number=st.floats(allow_nan=False) | st.integers(-(2**63), 2**63 - 1),
)
def test_any_text_or_number_in_a_setting_survives_the_file(text, number):
    system = lab_system(
        data_dir=text,
        device_url=text,
        factory_calibration=text,
        config={"executor": {"nothing": [number, {"k": text}], text: number}},
        actors=LAB_ACTORS,
    )
    written = tomllib.loads(system_toml(system))
    assert parse_system(written) == system
