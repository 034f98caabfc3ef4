"""The HAL against the simulator over TCP and over a pty: requests, faults, safety, reconnects."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.hal import HalActor, parse_hal_config
from actors.hal._config import per_heater
from protocol import ConfigError, ErrorCode
from protocol.hal import (
    ConfigureInputs,
    DelayRoute,
    Describe,
    GetDeviceStatus,
    GetHeater,
    GetHeaters,
    InputSetting,
    ListDevices,
    Program,
    ReadPowers,
    ResetInterlock,
    RunShots,
    SafeState,
    SetHeaters,
)
from protocol.system import ActorCrashLooping
from runtime import Actor, RemoteError
from sim import DeviceServer, SimConfig, parse_config, parse_fault, serve_pty, serve_tcp

from .stack import Running, mem_runtime, start_running

CHIP = parse_config({"modes": 4})


@dataclass
class Bench:
    server: DeviceServer
    hal: HalActor
    client: Actor
    url: str
    running: Running[HalActor]

    async def stop_hal(self) -> None:
        await self.running.stop()

    async def ask(self, request: Any) -> Any:
        with trio.fail_after(30):
            return await self.client.request("hal", request)

    async def error_of(self, request: Any) -> RemoteError:
        """The error the HAL answers ``request`` with; the test fails if the request succeeds."""
        with pytest.raises(RemoteError) as caught:
            await self.ask(request)
        return caught.value

    def fault_next(self, spec: str, offset: int = 1) -> None:
        """Inject a fault on the device's ``offset``-th message from now."""
        plan = self.server.device.faults
        separator = "," if ":" in spec else ":"
        plan.faults.append(parse_fault(f"{spec}{separator}nth={plan.count + offset}"))


@asynccontextmanager
async def bench(kind: str = "tcp", config: SimConfig = CHIP, seed: int = 1, **device: Any) -> AsyncIterator[Bench]:
    """A simulator, and a HAL actor and a client on it. The HAL stops first, as it would in a lab."""
    server = DeviceServer(config, seed=seed)
    async with trio.open_nursery() as outside:
        if kind == "tcp":
            host, port = await outside.start(serve_tcp, server, "127.0.0.1", 0)
            url = f"tcp://{host}:{port}"
        else:
            path = await outside.start(functools.partial(serve_pty, server))
            url = f"serial://{path}?baud=115200"
        runtime = mem_runtime("hal", "me")
        hal = HalActor("hal", runtime, devices=[{"name": "chip", "url": url, "timeout_s": 1.0, **device}])
        client = Actor("me", runtime)
        async with trio.open_nursery() as nursery:
            running = await start_running(nursery, hal)
            await nursery.start(client.run)
            with trio.fail_after(10):
                await hal.devices["chip"].wait_connected()
            yield Bench(server, hal, client, url, running)
            nursery.cancel_scope.cancel()
        outside.cancel_scope.cancel()


def with_faults(*specs: str, base: SimConfig = CHIP) -> SimConfig:
    return msgspec.structs.replace(base, faults=[parse_fault(s) for s in specs])


@pytest.mark.parametrize("kind", ["tcp", "pty"])
async def test_every_request_over_tcp_and_serial(kind):
    async with bench(kind) as b:
        devices = (await b.ask(ListDevices())).devices
        assert [(d.name, d.state) for d in devices] == [("chip", "connected")]
        assert devices[0].identity == "Photonica,PX-8,SN-000001,1.4.2"
        description = await b.ask(Describe(device="chip"))
        assert description.description.modes == 4
        assert description.limits_v == [7.0] * 16
        assert description.power_budget_w == pytest.approx(0.035 * 16 * 0.9)
        volts = np.linspace(0, 2, 16)
        result = await b.ask(SetHeaters(device="chip", volts=volts))
        assert np.allclose(result.readback, volts)
        assert result.mismatched == []
        result = await b.ask(SetHeaters(device="chip", changes={5: 1.25}))
        assert result.readback[5] == 1.25
        assert np.allclose(np.delete(result.readback, 5), np.delete(volts, 5))
        assert np.allclose((await b.ask(GetHeaters(device="chip"))).volts, result.readback)
        assert (await b.ask(GetHeater(device="chip", heater=5))).volts == 1.25
        await b.ask(
            ConfigureInputs(
                device="chip", inputs=[InputSetting(mode=0, state="photon"), InputSetting(mode=1, state="photon")]
            )
        )
        shots = await b.ask(RunShots(device="chip", shots=2000))
        # Counts per distinct pattern, not a row per shot: each pattern once, the counts adding up to the shots.
        assert shots.patterns.dtype == np.uint8
        assert shots.patterns.shape[1] == 4
        assert not shots.per_shot
        assert len(np.unique(shots.patterns, axis=0)) == len(shots.patterns) == len(shots.counts) <= 16
        assert shots.shots == 2000
        assert 0 < shots.counts @ shots.patterns.sum(axis=1) < 4000
        in_order = await b.ask(RunShots(device="chip", shots=2000, per_shot=True))
        assert in_order.per_shot
        assert in_order.patterns.shape == (2000, 4)
        assert (in_order.counts == 1).all()
        await b.ask(
            Program(
                device="chip",
                delay_lines=[DelayRoute(line=0, out_mode=3, in_mode=3, rounds=10)],
                ff_modes=[0],
                rules={"1": {3: 1.5}},
            )
        )
        shots = await b.ask(RunShots(device="chip", shots=100))
        assert shots.width == 8
        await b.ask(Program(device="chip"))
        await b.ask(ConfigureInputs(device="chip", inputs=[InputSetting(mode=2, state="coherent", power_w=1e-3)]))
        powers = (await b.ask(ReadPowers(device="chip"))).watts
        assert powers.shape == (4,)
        assert 0 < powers.sum() < 1e-3
        status = await b.ask(GetDeviceStatus(device="chip"))
        assert (status.state, status.interlock, status.sources) == ("connected", False, True)
        assert status.watchdog_s == 5.0  # armed by the HAL
        await b.ask(SafeState(device="chip"))
        assert b.server.device.chip.voltages.max() == 0
        assert b.server.device.sources_on is False
        await b.ask(ResetInterlock(device="chip"))


async def test_a_stopping_hal_leaves_the_device_safe():
    async with bench() as b:
        await b.ask(SetHeaters(device="chip", changes={4: 3.0}))
        await b.ask(ConfigureInputs(device="chip", inputs=[InputSetting(mode=0, state="photon")]))
        device = b.server.device
        assert device.chip.voltages[4] == 3.0
        assert device.sources_on
        with trio.fail_after(10):
            await b.stop_hal()  # the simulator goes on
        assert device.chip.voltages.max() == 0
        assert device.sources_on is False
        assert device.watchdog == 5.0  # still armed: were anything left on, the device would act alone


async def test_limits_are_enforced_before_the_wire():
    async with bench(v_max=5.0, power_limit_w=0.3) as b:
        sent_before = len(b.server.device.received)
        error = await b.error_of(SetHeaters(device="chip", changes={2: 5.5}))
        assert error.code == ErrorCode.SAFETY_LIMIT
        assert "heater 2" in str(error)
        assert "outside 0-5 V" in str(error)
        error = await b.error_of(SetHeaters(device="chip", volts=np.full(16, 4.9)))
        assert error.code == ErrorCode.SAFETY_LIMIT
        assert "over the budget" in str(error)
        error = await b.error_of(SetHeaters(device="chip", volts=np.zeros(15)))
        assert "expected 16 voltages" in str(error)
        assert len(b.server.device.received) == sent_before  # nothing reached the device


async def test_limits_per_heater_voltage_and_power_are_enforced_before_the_wire():
    per_heater_v = [7.0] * 16
    per_heater_v[3] = 2.5
    # heater 9 may draw 1 mW: at its nominal resistance that is sqrt(1e-3 * R) volts
    async with bench(v_max=per_heater_v, power_max_w={"9": 1e-3}) as b:
        resistance = b.server.device.description.heaters.resistance_ohm[9]
        at_most = (1e-3 * resistance) ** 0.5
        limits = (await b.ask(Describe(device="chip"))).limits_v
        assert limits[3] == 2.5
        assert limits[9] == pytest.approx(at_most)
        assert limits[0] == 7.0
        sent_before = len(b.server.device.received)
        error = await b.error_of(SetHeaters(device="chip", changes={3: 2.6}))
        assert error.code == ErrorCode.SAFETY_LIMIT
        assert "heater 3" in str(error)
        assert "outside 0-2.5 V" in str(error)
        error = await b.error_of(SetHeaters(device="chip", changes={9: at_most * 1.05}))
        assert error.code == ErrorCode.SAFETY_LIMIT
        assert "heater 9" in str(error)
        assert "over its limit of 0.001 W" in str(error)
        assert len(b.server.device.received) == sent_before  # nothing reached the device
        result = await b.ask(SetHeaters(device="chip", changes={3: 2.5, 9: at_most * 0.99}))
        assert result.readback[3] == 2.5


async def test_a_configuration_that_does_not_fit_the_device_refuses_it_with_the_reason():
    async with bench(v_max=[5.0] * 15) as b:  # the chip has 16 heaters
        (info,) = (await b.ask(ListDevices())).devices
        assert info.state == "refused"
        assert "v_max lists 15 values, but the device has 16 heaters" in info.detail
        error = await b.error_of(SetHeaters(device="chip", changes={0: 1.0}))
        assert error.code == ErrorCode.UNAVAILABLE
        assert "v_max lists 15 values" in str(error)


async def test_a_heater_the_device_does_not_have_is_an_invalid_request_naming_the_field():
    async with bench() as b:
        error = await b.error_of(GetHeater(device="chip", heater=16))
        assert (error.code, error.field) == (ErrorCode.INVALID, "heater")
        assert "heater 16 does not exist (the device has heaters 0-15)" in str(error)
        error = await b.error_of(SetHeaters(device="chip", changes={2: 1.0, 99: 1.0}))
        assert (error.code, error.field) == (ErrorCode.INVALID, "changes")
        assert b.server.device.chip.voltages[2] == 0  # nothing of it was applied


async def test_a_request_for_another_state_version_is_refused_before_the_wire():
    async with bench() as b:
        first = await b.ask(SetHeaters(device="chip", changes={1: 1.0}))
        configured = await b.ask(
            ConfigureInputs(device="chip", inputs=[InputSetting(mode=0, state="photon")], expect_version=first.version)
        )
        assert configured.version == first.version + 1
        await b.ask(RunShots(device="chip", shots=10, expect_version=configured.version))
        other = await b.ask(SetHeaters(device="chip", changes={2: 1.0}))  # someone else changes the chip
        assert other.version == configured.version + 1
        sent_before = len(b.server.device.received)
        for stale in (
            RunShots(device="chip", shots=10, expect_version=configured.version),
            ReadPowers(device="chip", expect_version=configured.version),
            SetHeaters(device="chip", changes={1: 2.0}, expect_version=configured.version),
            Program(device="chip", expect_version=configured.version),
        ):
            error = await b.error_of(stale)
            assert (error.code, error.field) == (ErrorCode.STATE_CHANGED, "expect_version")
        assert len(b.server.device.received) == sent_before
        assert b.server.device.chip.voltages[1] == 1.0
        status = await b.ask(GetDeviceStatus(device="chip"))
        assert status.version == other.version


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.lists(st.floats(-2, 9, allow_nan=False), min_size=16, max_size=16).map(lambda v: ("all", v)),
            st.dictionaries(st.integers(0, 17), st.floats(-2, 9, allow_nan=False), max_size=4).map(
                lambda c: ("some", c)
            ),
        ),
        min_size=1,
        max_size=12,
    )
)
async def test_no_sequence_of_requests_puts_an_out_of_limit_voltage_on_the_wire(requests):
    refusals: list[str] = []
    async with bench(v_max=6.5) as b:
        for kind, values in requests:
            request = (
                SetHeaters(device="chip", volts=np.array(values))
                if kind == "all"
                else SetHeaters(device="chip", changes=values)
            )
            try:
                await b.ask(request)
            except RemoteError as exc:
                refusals.append(exc.code)
        assert set(refusals) <= {ErrorCode.SAFETY_LIMIT, ErrorCode.INVALID}  # invalid: heaters 16 and 17
        chip = b.server.device.chip
        limit = b.server.device.config.power_limit_w
        for _, applied in b.server.device.received:
            assert applied.min() >= 0
            assert applied.max() <= 6.5
            assert float(np.sum(applied**2 / chip.resistance)) <= limit
        assert not b.server.device.interlock


async def test_a_dropped_connection_is_healed_and_idempotent_commands_repeated():
    events: list[str] = []
    async with bench(watchdog_s=30) as b:
        async with b.client.open_event_stream("hal.") as stream:
            b.fault_next("close")
            assert (await b.ask(GetHeater(device="chip", heater=0))).volts == 0
            while len(events) < 2:
                events.append((await stream.receive()).type)
        assert events == ["hal.disconnected", "hal.reconnected"]
        assert (await b.ask(GetDeviceStatus(device="chip"))).reconnects == 1


async def test_a_shot_run_cut_off_by_the_link_is_reported_not_repeated():
    async with bench(watchdog_s=30) as b:
        await b.ask(ConfigureInputs(device="chip", inputs=[InputSetting(mode=0, state="photon")]))
        b.fault_next("close")
        before = b.server.device.results
        error = await b.error_of(RunShots(device="chip", shots=10))
        assert error.code == ErrorCode.LINK_ERROR
        assert "may or may not have been carried out" in str(error)
        assert b.server.device.results is before  # the run itself never happened: the link dropped first
        assert (await b.ask(RunShots(device="chip", shots=10))).shots == 10


async def test_a_late_reply_is_discarded_and_the_command_repeated():
    async with bench(watchdog_s=30) as b:
        b.fault_next("delay:seconds=1.5")
        assert (await b.ask(GetHeater(device="chip", heater=3))).volts == 0
        # The late reply must not be taken as the answer to the next command.
        await b.ask(SetHeaters(device="chip", changes={3: 2.0}))
        for _ in range(5):
            assert (await b.ask(GetHeater(device="chip", heater=3))).volts == 2.0


async def test_corrupted_replies_never_desynchronise_the_link():
    async with bench(watchdog_s=30) as b:
        await b.ask(SetHeaters(device="chip", changes={1: 1.5}))
        b.server.device.faults.faults.append(parse_fault("corrupt:p=0.3"))
        readings = []
        failures: list[str] = []
        for _ in range(40):
            try:
                readings.append((await b.ask(GetHeater(device="chip", heater=1))).volts)
            except RemoteError as exc:
                failures.append(exc.code)
        assert set(failures) <= {ErrorCode.LINK_ERROR, ErrorCode.DEVICE_ERROR}
        b.server.device.faults.faults.clear()
        # A flipped bit inside a number can pass for a number; a flipped bit
        # anywhere else is caught and the query repeated.
        assert sum(r == 1.5 for r in readings) >= len(readings) * 0.6
        # And the link never slips: every answer after the faults stop is the
        # answer to its own question.
        for heater, volts in [(1, 1.5), (2, 0.0), (1, 1.5)]:
            assert (await b.ask(GetHeater(device="chip", heater=heater))).volts == volts


async def test_device_errors_come_back_with_their_scpi_number():
    async with bench(watchdog_s=30) as b:
        b.fault_next("error:code=-240,message=heater driver fault")
        error = await b.error_of(SetHeaters(device="chip", changes={0: 1.0}))
        assert error.code == ErrorCode.DEVICE_ERROR
        assert "-240" in str(error)
        assert "heater driver fault" in str(error)
        assert (await b.ask(SetHeaters(device="chip", changes={0: 1.0}))).readback[0] == 1.0


async def test_an_interlock_trip_is_published_and_blocks_writes_until_reset():
    async with bench(watchdog_s=30) as b:
        b.fault_next("interlock")
        async with b.client.open_event_stream("hal.interlock") as stream:
            error = await b.error_of(SetHeaters(device="chip", changes={0: 1.0}))
            assert error.code == ErrorCode.INTERLOCK
            with trio.fail_after(5):
                event = await stream.receive()
            assert event.body.device == "chip"
        error = await b.error_of(SetHeaters(device="chip", changes={0: 1.0}))
        assert error.code == ErrorCode.INTERLOCK
        assert "reset it" in str(error)
        await b.ask(ResetInterlock(device="chip"))
        assert (await b.ask(SetHeaters(device="chip", changes={0: 1.0}))).readback[0] == 1.0


async def test_a_stuck_heater_raises_the_read_differs_from_set_alarm():
    async with bench(config=with_faults("stuck:heater=6,volts=0.5")) as b:
        async with b.client.open_event_stream("hal.readback_mismatch") as stream:
            result = await b.ask(SetHeaters(device="chip", changes={6: 3.0, 7: 2.0}))
            assert result.mismatched == [6]
            assert result.readback[6] == 0.5
            with trio.fail_after(5):
                alarm = (await stream.receive()).body
        assert (alarm.heaters, alarm.set_v, alarm.read_v) == ([6], [3.0], [0.5])


async def test_reconnects_within_a_second_of_the_device_coming_back():
    server = DeviceServer(CHIP, seed=1)
    async with trio.open_nursery() as outer:
        first = trio.CancelScope()

        async def serve_once(scope: trio.CancelScope, port: int, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
            with scope:
                await serve_tcp(server, "127.0.0.1", port, task_status=task_status)

        host, port = await outer.start(serve_once, first, 0)
        hal = HalActor(
            "hal", mem_runtime("hal"), devices=[{"name": "chip", "url": f"tcp://{host}:{port}", "watchdog_s": 1.5}]
        )
        await outer.start(hal.run)
        device = hal.devices["chip"]
        await device.wait_connected()
        async with hal.open_event_stream("hal.") as stream:
            first.cancel()  # the device goes away
            with trio.fail_after(10):
                while (await stream.receive()).type != "hal.disconnected":
                    pass
            await trio.sleep(2)  # away for a while
            await outer.start(serve_once, trio.CancelScope(), port)
            back = trio.current_time()
            with trio.fail_after(5):
                while (await stream.receive()).type != "hal.reconnected":
                    pass
            assert trio.current_time() - back < 1.0
        assert device.state == "connected"
        outer.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (None, [np.inf] * 4),
        (5.0, [5.0] * 4),
        ([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]),
        ({"2": 1.5}, [np.inf, np.inf, 1.5, np.inf]),
        ({"2": 1.5, "default": 6.0}, [6.0, 6.0, 1.5, 6.0]),
    ],
)
def test_a_limit_is_given_for_all_heaters_per_heater_or_for_some(limit, expected):
    assert per_heater(limit, 4, what="v_max").tolist() == expected


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ([1.0, 2.0], "v_max lists 2 values, but the device has 4 heaters"),
        ({"4": 1.0}, "v_max names heater 4, but the device has heaters 0-3"),
    ],
)
def test_a_limit_that_does_not_fit_the_device_says_why(limit, message):
    with pytest.raises(ConfigError, match=message):
        per_heater(limit, 4, what="v_max")


def test_a_per_heater_limit_key_must_be_a_heater_index_or_default():
    with pytest.raises(ConfigError, match="v_max"):
        parse_hal_config({"device": [{"name": "chip", "url": "sim://", "v_max": {"twelve": 1.0}}]})


@pytest.mark.parametrize("value", [1e300, -1e300, 1.7976931348623157e308, float("inf"), float("nan")])
async def test_any_float_in_a_heater_setting_is_refused_before_the_wire_never_a_handler_failure(value):
    async with bench(power_max_w=0.01) as b:
        sent_before = len(b.server.device.received)
        for request in (
            SetHeaters(device="chip", changes={3: value}),
            SetHeaters(device="chip", volts=np.full(16, value)),
        ):
            error = await b.error_of(request)
            # A finite float over the limit is the HAL's to refuse; the codec refuses a non-finite one in a map.
            assert error.code in (ErrorCode.SAFETY_LIMIT, ErrorCode.INVALID), error
        assert len(b.server.device.received) == sent_before


async def test_the_devices_go_to_their_safe_state_when_an_actor_is_crash_looping():
    async with bench() as b:
        await b.ask(SetHeaters(device="chip", changes={4: 3.0}))
        await b.ask(ConfigureInputs(device="chip", inputs=[InputSetting(mode=0, state="photon")]))
        assert b.server.device.sources_on
        b.client.publish(ActorCrashLooping(actor="executor", crashes=6, window=60, delay=3.2, reason="exit status 1"))
        with trio.fail_after(10):
            while b.server.device.sources_on or b.server.device.chip.voltages.any():  # noqa: ASYNC110
                await trio.sleep(0.01)
