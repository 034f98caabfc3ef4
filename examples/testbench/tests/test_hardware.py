"""Checks that mean something only on the real chip: skipped in CI, run with `pytest --awen-connect URL`."""

import pytest

from awen import Lab


@pytest.mark.awen_hardware
def test_the_lab_runs_our_chip(awen_client: Lab) -> None:
    identities = [device.identity or "" for device in awen_client.devices()]
    assert any(",PX-8," in identity for identity in identities), identities
