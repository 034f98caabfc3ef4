"""The HAL under concurrent requests: limits hold, nothing is lost or half applied, no false alarm.

Every `hal.set_heaters` is checked against the state its write will leave, under
the same per-device lock as the write, so concurrent requests behave as if run
one after another. These tests fire many requests at once from trio tasks and
check what reached the simulated chip (`Device.received`, every applied state in
order) against the HAL's limits and against the accepted requests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import ErrorCode
from protocol.hal import GetHeaters, SetHeaters
from runtime import RemoteError

from .test_hal import bench

HEATERS = 16  # the 4-mode chip of tests.test_hal


def applied(request: SetHeaters, state: np.ndarray) -> np.ndarray:
    """The state a set_heaters request leaves when applied to ``state``."""
    target = state.copy() if request.volts is None else np.asarray(request.volts, dtype=np.float64).copy()
    for heater, value in request.changes.items():
        target[heater] = value
    return target


def linearise(start: np.ndarray, states: list[np.ndarray], accepted: list[tuple[SetHeaters, Any]]) -> list[int]:
    """An order of the accepted requests that, applied one by one to ``start``, gives ``states``.

    Each accepted request must account for exactly one applied state, and its
    reply's read-back must be that state. Raises AssertionError if no order does.
    """
    assert len(states) == len(accepted), f"{len(accepted)} requests were accepted, the chip saw {len(states)} writes"
    order: list[int] = []
    used = [False] * len(accepted)

    def search(k: int, state: np.ndarray) -> bool:
        if k == len(states):
            return True
        for i, (request, reply) in enumerate(accepted):
            if used[i] or not np.array_equal(applied(request, state), states[k]):
                continue
            if not np.array_equal(reply.readback, states[k]):
                continue
            used[i] = True
            order.append(i)
            if search(k + 1, states[k]):
                return True
            used[i] = False
            order.pop()
        return False

    assert search(0, start), "no order of the accepted requests explains what reached the chip"
    return order


async def fire(b: Any, requests: list[SetHeaters]) -> list[tuple[SetHeaters, Any]]:
    """Send every request at once; (request, reply or RemoteError) for each."""
    outcomes: list[tuple[SetHeaters, Any]] = [None] * len(requests)  # type: ignore[list-item]

    async def one(i: int, request: SetHeaters) -> None:
        try:
            outcomes[i] = (request, await b.ask(request))
        except RemoteError as exc:
            outcomes[i] = (request, exc)

    async with trio.open_nursery() as nursery:
        for i, request in enumerate(requests):
            nursery.start_soon(one, i, request)
    return outcomes


def check_the_chip(b: Any, before: int, start: np.ndarray, outcomes: list[tuple[SetHeaters, Any]], v_max: float):
    device = b.server.device
    resistance = np.array(device.description.heaters.resistance_ohm)
    budget = b.hal.devices["chip"].power_budget
    states = [volts for _, volts in device.received[before:]]
    for volts in states:
        assert volts.min() >= 0
        assert volts.max() <= v_max
        assert float(np.sum(volts**2 / resistance)) <= budget + 1e-12, "the chip went over the HAL's power budget"
    assert not device.interlock
    accepted = [(request, reply) for request, reply in outcomes if not isinstance(reply, RemoteError)]
    refused = [reply for _, reply in outcomes if isinstance(reply, RemoteError)]
    assert {exc.code for exc in refused} <= {ErrorCode.SAFETY_LIMIT}
    linearise(start, states, accepted)
    for _, reply in accepted:
        assert reply.mismatched == [], "a read-back alarm on a heater that holds what it should"
    return accepted, refused


async def test_concurrent_one_heater_requests_cannot_add_up_over_the_budget():
    # Each request alone is well within the budget; twenty together are far over it.
    async with bench(power_limit_w=0.1) as b, b.client.open_event_stream("hal.readback_mismatch") as alarms:
        budget = b.hal.devices["chip"].power_budget
        resistance = np.array(b.server.device.description.heaters.resistance_ohm)
        volts = float(np.sqrt(budget / 4.5 * resistance.max()))  # four heaters fit the budget, five do not
        total_accepted = 0
        for burst in range(20):
            before = len(b.server.device.received)
            start = (await b.ask(GetHeaters(device="chip"))).volts
            requests = [SetHeaters(device="chip", changes={(burst + i) % HEATERS: volts}) for i in range(HEATERS)]
            outcomes = await fire(b, requests)
            accepted, refused = check_the_chip(b, before, start, outcomes, 7.0)
            assert len(accepted) == 4, "the first four to take the device fit the budget, the rest do not"
            assert len(refused) == HEATERS - 4
            total_accepted += len(accepted)
            await b.ask(SetHeaters(device="chip", volts=np.zeros(HEATERS)))
        assert total_accepted == 80
        with pytest.raises(trio.WouldBlock):
            alarms.receive_nowait()


async def test_concurrent_multi_heater_requests_lose_no_update():
    async with bench() as b:
        before = len(b.server.device.received)
        start = (await b.ask(GetHeaters(device="chip"))).volts
        requests = [SetHeaters(device="chip", changes={2 * i: 0.5 + i / 10, 2 * i + 1: 0.25}) for i in range(8)]
        outcomes = await fire(b, requests)
        _accepted, refused = check_the_chip(b, before, start, outcomes, 7.0)
        assert not refused
        final = (await b.ask(GetHeaters(device="chip"))).volts
        expected = start.copy()
        for request in requests:
            expected = applied(request, expected)
        assert np.array_equal(final, expected), "a heater one accepted request set does not hold its value"


request_strategy = st.one_of(
    st.lists(st.floats(0, 3.5, allow_nan=False), min_size=HEATERS, max_size=HEATERS).map(
        lambda v: SetHeaters(device="chip", volts=np.array(v))
    ),
    st.dictionaries(st.integers(0, HEATERS - 1), st.floats(0, 3.5, allow_nan=False), min_size=1, max_size=4).map(
        lambda c: SetHeaters(device="chip", changes=c)
    ),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(request_strategy, min_size=2, max_size=24), min_size=1, max_size=3))
async def test_concurrent_requests_behave_as_if_run_one_after_another(bursts):
    async with (
        bench(power_limit_w=0.25, v_max=3.0) as b,
        b.client.open_event_stream("hal.readback_mismatch") as alarms,
    ):
        for requests in bursts:
            before = len(b.server.device.received)
            start = (await b.ask(GetHeaters(device="chip"))).volts
            outcomes = await fire(b, requests)
            check_the_chip(b, before, start, outcomes, 3.0)
            final = (await b.ask(GetHeaters(device="chip"))).volts
            states = [volts for _, volts in b.server.device.received[before:]]
            assert np.array_equal(final, states[-1] if states else start)
        with pytest.raises(trio.WouldBlock):
            alarms.receive_nowait()
