"""The Photonica driver on its own: URLs, typed commands, errors, resync, identity, reconnects, transcript."""

from __future__ import annotations

import functools
import logging
import math
import random

import msgspec
import numpy as np
import pytest
import trio

from drivers import Batch, IdentityChanged, PhotonicaDriver, ReconnectPolicy, endpoint_from_url, open_driver
from drivers import _replies as replies
from protocol import ConfigError, DeviceError, LinkError, scpi
from protocol import photonica as px
from protocol.hal import DelayRoute, InputSetting
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
            await driver.send(Batch().add(px.SET_HEATER, 99, 1.0).add(px.SET_HEATER, 1, 99.0))
        assert caught.value.scpi_code == -222
        assert "heater 99 does not exist" in caught.value.scpi_text
        assert "then: -222 Data out of range; heater 1: 99 V" in caught.value.scpi_text
        assert await driver.ask(Batch().add(px.NEXT_ERROR), bytes) == b'0,"No error"'
        with pytest.raises(DeviceError) as caught:
            await driver.ask(Batch().add(px.PATTERNS), bytes)
        assert caught.value.scpi_code == -230


async def test_a_cancelled_command_leaves_the_link_in_a_known_state():
    async with open_driver("sim://?seed=1&modes=4", timeout=5.0) as driver:
        endpoint = driver.endpoint
        plan = endpoint.server.device.faults  # type: ignore[attr-defined]
        plan.faults.append(parse_fault(f"delay:nth={plan.count + 1},seconds=0.5"))
        with trio.move_on_after(0.1):
            await driver.read_identity()  # cancelled while its reply is held back
        await driver.set_heater(2, 1.5)
        assert await driver.read_heater(2) == 1.5


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
            await driver.read_identity()
        await driver.aclose()
        nursery.cancel_scope.cancel()


async def test_every_exchange_is_in_the_debug_transcript(caplog):
    caplog.set_level(logging.DEBUG, logger="awen.drivers.transcript")
    async with open_driver("sim://?seed=1&modes=4", name="px") as driver:
        await driver.read_heater(0)
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


async def test_every_typed_command_against_the_simulator():
    async with open_driver("sim://?seed=1&modes=4") as driver:
        device = driver.endpoint.server.device  # type: ignore[attr-defined]
        assert await driver.read_identity() == "Photonica,PX-8,SN-000001,1.4.2"
        assert await driver.capabilities() == driver.description
        await driver.arm_watchdog(5.0)
        assert device.watchdog == 5.0
        volts = np.linspace(0, 1, 16)
        await driver.set_heaters(volts)
        await driver.set_heater(3, 1.25)
        volts[3] = 1.25
        assert np.array_equal(await driver.read_heaters(), volts)
        assert await driver.read_heater(3) == 1.25
        photons = [InputSetting(mode=0, state="photon"), InputSetting(mode=1, state="photon")]
        await driver.configure_inputs(photons, clear=True, sources_on=True)
        assert await driver.sources()
        shots = await driver.run_shots(100)
        assert (shots.width, shots.patterns.shape[1], int(shots.counts.sum()), shots.per_shot) == (4, 4, 100, False)
        in_order = await driver.run_shots(100, per_shot=True)
        assert (in_order.patterns.shape, in_order.width, in_order.per_shot) == ((100, 4), 4, True)
        await driver.program([0], {"1": {3: 1.5}}, [DelayRoute(line=0, out_mode=3, in_mode=3, rounds=10)])
        assert device.program.rules == {"1": {3: 1.5}}
        assert (await driver.run_shots(10)).width == 8
        await driver.program([], {}, [])
        coherent = [InputSetting(mode=2, state="coherent", power_w=1e-3, phase_rad=0.5)]
        await driver.configure_inputs(coherent, clear=True, sources_on=True)
        assert (device.inputs[2].kind, device.inputs[2].power, device.inputs[2].phase) == ("COH", 1e-3, 0.5)
        assert 0 < (await driver.read_powers()).sum() < 1e-3
        status = await driver.status()
        assert (status.sources, status.watchdog_s) == (True, 5.0)
        assert await driver.temperature() == pytest.approx(status.temperature_c, abs=1e-6)
        assert not await driver.interlock()
        await driver.safe_state()
        assert not (await driver.read_heaters()).any()
        assert not await driver.sources()
        await driver.enable_sources(True)
        await driver.reset_interlock()


def test_a_status_that_says_more_or_less_than_ours_reads_as_far_as_it_goes():
    said = replies.status(scpi.block(b'{"interlock": true, "settled": true, "humidity_pct": 40}'))
    assert (said.interlock, said.settled, said.sources, said.watchdog_s, said.time_s) == (True, True, False, 0.0, None)
    assert math.isnan(said.temperature_c)
    with pytest.raises(ValueError, match=r"status does not decode: Expected `bool`, got `str` - at `\$.interlock`"):
        replies.status(scpi.block(b'{"interlock": "yes"}'))


async def test_a_batch_is_one_message_with_one_query_at_most(caplog):
    caplog.set_level(logging.DEBUG, logger="awen.drivers.transcript")
    with pytest.raises(ValueError, match="one query"):
        Batch().add(px.HEATER, 0).add(px.HEATERS)
    async with open_driver("sim://?seed=1&modes=4", name="px") as driver:
        with pytest.raises(ValueError, match="needs a batch with a query"):
            await driver.ask(Batch().add(px.CLEAR_INPUTS), bytes)
        await driver.send(Batch())  # nothing to send: nothing sent
        reply = await driver.ask(Batch().add(px.SET_HEATER, 1, 0.5).add(px.HEATER, 1), float)
        assert reply == 0.5
    sent = [r.getMessage() for r in caplog.records if r.getMessage().startswith("->")]
    assert sent[-1] == "-> b'HEAT:VOLT 1,0.5;:HEAT:VOLT? 1;:SYST:ERR?'"


async def test_two_tasks_using_one_driver_at_once_is_an_error_not_a_hidden_wait():
    async with open_driver("sim://?seed=1&modes=4", timeout=5.0) as driver:
        plan = driver.endpoint.server.device.faults  # type: ignore[attr-defined]
        plan.faults.append(parse_fault(f"delay:nth={plan.count + 1},seconds=0.5"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(driver.read_heater, 0)  # its reply is held back
            await trio.sleep(0.1)
            with pytest.raises(trio.BusyResourceError, match="take turns"):
                await driver.read_heater(1)


async def test_the_set_up_runs_after_every_connection_before_anything_else():
    calls: list[tuple[bool, float]] = []
    events: list[str] = []

    async def set_up(first: bool) -> None:
        calls.append((first, await driver.read_heater(0)))

    async with trio.open_nursery() as nursery:
        driver = PhotonicaDriver(
            endpoint_from_url("sim://?seed=1&modes=4"), set_up=set_up, on_event=lambda kind, _: events.append(kind)
        )
        await driver.connect(nursery)
        await driver.set_heater(0, 1.0)
        server = driver.endpoint.server  # type: ignore[attr-defined]
        server.device.faults.faults.append(parse_fault(f"close:nth={server.device.faults.count + 1}"))
        assert await driver.read_heater(0) == 1.0  # dropped, reconnected, set up, then asked again
        assert calls == [(True, 0.0), (False, 1.0)]
        assert events == ["disconnected", "reconnected"]
        assert driver.reconnects == 1
        await driver.aclose()
        nursery.cancel_scope.cancel()


async def test_a_set_up_that_fails_on_the_link_is_tried_again_with_the_connection():
    attempts = 0

    async def set_up(first: bool) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise LinkError("not yet")

    async with trio.open_nursery() as nursery:
        driver = PhotonicaDriver(endpoint_from_url("sim://?seed=1&modes=4"), set_up=set_up)
        with pytest.raises(LinkError, match=r"cannot reach.*not yet"):
            await driver.connect(nursery)  # once: the first failure is the answer
        await driver.connect(nursery, keep_trying=True)
        assert attempts == 3
        await driver.aclose()
        nursery.cancel_scope.cancel()


async def test_keep_trying_connects_once_the_device_is_there(autojump_clock):
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nobody listens there yet
    unreachable: list[str] = []
    server = DeviceServer(CHIP, seed=1)
    async with trio.open_nursery() as nursery:
        driver = PhotonicaDriver(
            endpoint_from_url(f"tcp://127.0.0.1:{port}"),
            on_event=lambda kind, detail: unreachable.append(detail) if kind == "unreachable" else None,
        )
        connected = trio.Event()

        async def connect() -> None:
            await driver.connect(nursery, keep_trying=True)
            connected.set()

        nursery.start_soon(connect)
        await trio.sleep(3)
        assert unreachable
        assert not connected.is_set()
        await nursery.start(serve_tcp, server, "127.0.0.1", port)
        with trio.fail_after(1):
            await connected.wait()
        assert driver.identity == "Photonica,PX-8,SN-000001,1.4.2"
        await driver.aclose()
        nursery.cancel_scope.cancel()


async def test_a_device_whose_capabilities_changed_across_a_reconnect_is_refused():
    async with open_driver("sim://?seed=1&modes=4") as driver:
        server = driver.endpoint.server  # type: ignore[attr-defined]
        server.device.description = msgspec.structs.replace(server.device.description, max_shots=7)
        server.device._description_json = px.encode_description(server.device.description)
        server.device.faults.faults.append(parse_fault(f"close:nth={server.device.faults.count + 1}"))
        with pytest.raises(IdentityChanged, match="capabilities changed"):
            await driver.read_heater(0)
