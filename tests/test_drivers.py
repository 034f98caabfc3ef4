"""The Photonica driver on its own: URLs, errors, resynchronisation, identity, transcript."""

from __future__ import annotations

import functools
import logging
import random

import pytest
import trio

from drivers import IdentityChanged, PhotonicaDriver, ReconnectPolicy, endpoint_from_url, open_driver
from protocol import ConfigError, DeviceError, LinkError
from sim import DeviceServer, parse_config, parse_fault, serve_tcp

CHIP = parse_config({"modes": 4})


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://x", "starts with tcp://, serial:// or sim://"),
        ("tcp://localhost", "tcp://HOST:PORT"),
        ("serial://", "serial:///dev/ttyUSB0"),
        ("sim://?modes=1", "Expected `int` >= 2"),
        ("sim://?fault=explode", "fault 'explode'"),
        ("sim://?seed=abc", "invalid literal"),
    ],
)
def test_bad_urls_say_what_is_wrong(url, message):
    with pytest.raises(ConfigError, match=message):
        endpoint_from_url(url)


async def test_device_errors_carry_the_scpi_number_and_drain_the_queue():
    async with open_driver("sim://?seed=1&modes=4") as driver:
        with pytest.raises(DeviceError) as caught:
            await driver.write("HEAT:VOLT 99,1;HEAT:VOLT 1,99")
        assert caught.value.scpi_code == -222
        assert "heater 99 does not exist" in caught.value.scpi_text
        assert "then: -222 Data out of range; heater 1: 99 V" in caught.value.scpi_text
        assert await driver.query("SYST:ERR?") == b'0,"No error"'
        with pytest.raises(DeviceError) as caught:
            await driver.query("FETC:PATT?")
        assert caught.value.scpi_code == -230


async def test_a_cancelled_command_leaves_the_link_in_a_known_state():
    async with open_driver("sim://?seed=1&modes=4", timeout=5.0) as driver:
        endpoint = driver.endpoint
        plan = endpoint.server.device.faults  # type: ignore[attr-defined]
        plan.faults.append(parse_fault(f"delay:nth={plan.count + 1},seconds=0.5"))
        with trio.move_on_after(0.1):
            await driver.query("*IDN?")  # cancelled while its reply is held back
        await driver.write("HEAT:VOLT 2,1.5")
        assert await driver.query("HEAT:VOLT? 2") == b"1.500000000000E+00"


async def test_a_different_device_behind_the_same_address_is_refused():
    first = DeviceServer(CHIP, seed=1)
    other = DeviceServer(parse_config({"modes": 4, "identity": {"serial": "SN-999"}}), seed=1)
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def serve(server: DeviceServer, port: int, *, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
            with scope if server is first else trio.CancelScope():
                await serve_tcp(server, "127.0.0.1", port, task_status=task_status)

        host, port = await nursery.start(functools.partial(serve, first, 0))
        driver = PhotonicaDriver(endpoint_from_url(f"tcp://{host}:{port}"), timeout=1.0)
        await driver.connect(nursery)
        assert driver.identity == "Photonica,PX-8,SN-000001,1.4.2"
        scope.cancel()
        await nursery.start(functools.partial(serve, other, port))
        with pytest.raises(IdentityChanged, match="SN-999"):
            await driver.query("*IDN?")
        await driver.aclose()
        nursery.cancel_scope.cancel()


async def test_every_exchange_is_in_the_debug_transcript(caplog):
    caplog.set_level(logging.DEBUG, logger="awen.drivers.transcript")
    async with open_driver("sim://?seed=1&modes=4", name="px") as driver:
        await driver.query("HEAT:VOLT? 0")
    lines = [r.getMessage() for r in caplog.records if r.name == "awen.drivers.transcript.px"]
    assert "-> b'HEAT:VOLT? 0;:SYST:ERR?'" in lines
    assert "<- b'0.000000000000E+00;0,\"No error\"'" in lines


def test_reconnect_backoff_grows_with_jitter_up_to_its_ceiling():
    policy = ReconnectPolicy(first=0.05, longest=0.5, jitter=0.5)
    rng = random.Random(1)
    for attempt, base in [(0, 0.05), (1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert base * 0.5 <= min(delays) < base * 0.7
        assert base * 1.3 < max(delays) <= base * 1.5


async def test_an_unreachable_device_is_a_link_error():
    with pytest.raises(LinkError, match=r"cannot reach tcp://127\.0\.0\.1:9"):
        async with open_driver("tcp://127.0.0.1:9"):
            pass
