"""System configuration: what a lab writes in its TOML file, and what it is told when it is wrong."""

from __future__ import annotations

import pytest

from awen.cli import main as awen_main
from protocol import ConfigError
from runtime import RestartPolicy, load_system, parse_system


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[runtime]\nliveness = "three"\n', r"Expected `int`, got `str` - at `\$.runtime.liveness`"),
        ("[runtime]\nheartbeat_interval = -1\n", "runtime.heartbeat_interval must be positive, got -1.0"),
        ('[[actor]]\nname = "x"\nrestrat = {}\n', r"unknown field `restrat` - at `\$.actor\[0\]`"),
        ('[[actor]]\nname = "x"\nfactory = "nope:Thing"\n', "factory 'nope:Thing': cannot import nope"),
        ('[[actor]]\nname = "x"\nfactory = "actors"\n', "must look like 'package.module:Name'"),
        ('[[actor]]\nname = "x"\nfactory = "actors:Nothing"\n', "actors has no 'Nothing'"),
        ('[[actor]]\nname = "x"\n[[actor]]\nname = "x"\n', "actor names must be unique; repeated: x"),
        ('[[actor]]\nname = "a b"\n', r"Expected `str` matching regex"),
        (
            '[[actor]]\nname = "x"\nrestart = { window = 0 }\n',
            r"Expected `float` > 0.0 - at `\$.actor\[0\].restart.window`",
        ),
        ("[[actor]\n", "is not valid TOML"),
    ],
)
def test_a_wrong_file_is_refused_with_the_file_and_the_key(tmp_path, toml, message, capsys):
    path = tmp_path / "system.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message) as caught:
        load_system(path)
    assert str(path) in str(caught.value)
    assert awen_main(["up", str(path)]) == 2  # usage: a file that cannot be used (decision 0014 §6)
    assert f"awen: error: {path}" in capsys.readouterr().err


def test_a_missing_file_is_named():
    with pytest.raises(ConfigError, match=r"cannot read /no/such/system\.toml: No such file"):
        load_system("/no/such/system.toml")


def test_mem_and_inproc_cannot_reach_actor_processes(tmp_path):
    config = parse_system({"transport": "mem", "actor": [{"name": "x"}]})
    with pytest.raises(ConfigError, match=r"'x' runs in a process of its own, so its address cannot be mem://x"):
        config.resolve(str(tmp_path))
    in_process = parse_system({"transport": "mem", "actor": [{"name": "x", "process": False}]})
    assert in_process.resolve(str(tmp_path)).directory["x"].address == "mem://x"


def test_addresses_are_resolved_once_and_port_zero_becomes_a_real_port(tmp_path):
    config = parse_system(
        {"actor": [{"name": "a"}, {"name": "b", "address": "tcp://127.0.0.1:0", "events": "tcp://127.0.0.1:0"}]}
    )
    resolved = config.resolve(str(tmp_path))
    assert resolved.directory["a"].address == f"ipc://{tmp_path}/a.sock"
    assert resolved.directory["supervisor"].events == f"ipc://{tmp_path}/supervisor.events.sock"
    b = resolved.directory["b"]
    assert b.address.startswith("tcp://127.0.0.1:")
    assert not b.address.endswith(":0")
    assert b.address != b.events


def test_restart_backoff_doubles_up_to_its_ceiling():
    policy = RestartPolicy(backoff=0.1, backoff_max=0.5)
    assert [policy.delay(n) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.5, 0.5]
