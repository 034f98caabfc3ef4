"""The HAL's `identity` setting: a device answering as another than the configured one is not used."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import sim
from actors.hal import HalActor, parse_hal_config
from actors.hal._config import identity_matches
from actors.health import Check, LabActors, lab_checks
from drivers._endpoint import SimEndpoint
from protocol import ConfigError, ErrorCode
from protocol.hal import GetHeater, ListDevices, SetHeaters
from runtime import Actor, RemoteError

from .stack import mem_runtime

IDN = "Photonica,PX-8,SN-000001,1.4.2"
"""What the simulator answers to ``*IDN?`` by default."""

WRONG = (
    f"answers as {IDN!r}, configured as 'Photonica,PX-8,SN-000002,*': is this the right device? "
    "fix the address or the identity in the configuration"
)


@asynccontextmanager
async def lab(**device: Any) -> AsyncIterator[tuple[HalActor, Actor]]:
    """A HAL on one simulated device (``sim://``), and a client."""
    runtime = mem_runtime("hal", "me")
    hal = HalActor("hal", runtime, devices=[{"name": "chip", "url": "sim://?seed=1&modes=4", **device}])
    client = Actor("me", runtime)
    async with trio.open_nursery() as nursery:
        await nursery.start(hal.run)
        await nursery.start(client.run)
        with trio.fail_after(10):
            await hal.devices["chip"].wait_connected()
        yield hal, client
        nursery.cancel_scope.cancel()


def sim_endpoint(hal: HalActor) -> SimEndpoint:
    driver = hal.devices["chip"].driver
    assert driver is not None
    assert isinstance(driver.endpoint, SimEndpoint)
    return driver.endpoint


async def devices_check(client: Actor) -> Check:
    checks = await lab_checks(client, LabActors(memory=(), calibration=()), heartbeats={})
    return checks["devices"]


@pytest.mark.parametrize(
    ("configured", "matches"),
    [
        (IDN, True),
        ("Photonica,PX-8,SN-000001,*", True),
        ("*", True),
        ("Photonica,PX-8,SN-000001", False),  # not a prefix match without the `*`
        ("Photonica,PX-8,SN-000002,*", False),
        ("Photonica,PX-8,SN-000001,1.4.2,*", False),
    ],
)
def test_the_identity_matches_exactly_or_by_prefix_with_a_star(configured, matches):
    assert identity_matches(configured, IDN) is matches


def test_an_empty_identity_is_a_configuration_error():
    with pytest.raises(ConfigError, match="identity"):
        parse_hal_config({"device": [{"name": "chip", "url": "sim://", "identity": ""}]})


@pytest.mark.parametrize("configured", [IDN, "Photonica,PX-8,SN-000001,*"])
async def test_a_device_answering_as_configured_is_connected(configured, autojump_clock):
    async with lab(identity=configured) as (_, client):
        (info,) = (await client.request("hal", ListDevices())).devices
        assert (info.state, info.identity, info.detail) == ("connected", IDN, "")
        assert (await client.request("hal", SetHeaters(device="chip", changes={0: 1.0}))).readback[0] == 1.0
        check = await devices_check(client)
        assert check.ok, check.detail


async def test_a_device_answering_as_another_is_refused_and_the_devices_check_says_what_to_do(autojump_clock, caplog):
    caplog.set_level(logging.ERROR, logger="awen.hal")
    async with lab(identity="Photonica,PX-8,SN-000002,*") as (hal, client):
        (info,) = (await client.request("hal", ListDevices())).devices
        assert (info.state, info.identity, info.detail) == ("refused", IDN, WRONG)
        endpoint = sim_endpoint(hal)
        received = len(endpoint.server.device.received)
        for request in (SetHeaters(device="chip", changes={0: 1.0}), GetHeater(device="chip", heater=0)):
            with pytest.raises(RemoteError) as caught:
                await client.request("hal", request)
            assert caught.value.code == ErrorCode.UNAVAILABLE
            assert f"chip: refused: {WRONG}" in str(caught.value)
        await trio.sleep(30)  # no watchdog, no temperature: nothing more goes to the wrong device
        assert len(endpoint.server.device.received) == received
        check = await devices_check(client)
        assert not check.ok
        assert f"chip is refused: {WRONG}" in check.detail
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "answers as" in r.message]
        assert errors == [f"chip: {WRONG}"]  # logged once


async def test_a_swapped_cable_is_caught_at_the_reconnect(autojump_clock):
    async with lab(identity="Photonica,PX-8,SN-000001,*", watchdog_s=0) as (hal, client):
        endpoint = sim_endpoint(hal)
        other = sim.DeviceServer(sim.parse_config({"modes": 4, "identity": {"serial": "SN-000002"}}), seed=1)
        endpoint._connect = functools.partial(sim.InProcessStream, other)  # the cable now goes to another device
        plan = endpoint.server.device.faults
        plan.faults.append(sim.parse_fault(f"close:nth={plan.count + 1}"))  # and the old link drops
        with pytest.raises(RemoteError) as caught:
            await client.request("hal", GetHeater(device="chip", heater=0))
        assert caught.value.code == ErrorCode.UNAVAILABLE
        swapped = (
            f"was {IDN!r}, now answers 'Photonica,PX-8,SN-000002,1.4.2': is this the right device? "
            "check its cable and its address; refused until the HAL restarts"
        )
        assert f"chip: refused: {swapped}" in str(caught.value)
        (info,) = (await client.request("hal", ListDevices())).devices
        assert (info.state, info.detail) == ("refused", swapped)
        with pytest.raises(RemoteError) as caught:
            await client.request("hal", SetHeaters(device="chip", changes={0: 1.0}))
        assert caught.value.code == ErrorCode.UNAVAILABLE
        await trio.sleep(30)  # the watchdog feeder and the temperature reader stop, not crash the HAL
        check = await devices_check(client)
        assert not check.ok
        assert f"chip is refused: {swapped}" in check.detail
