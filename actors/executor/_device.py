"""The executor's device, through the HAL: set up for a phase, fired, read, made safe, tried again.

The executor keeps what it set on the device (heaters, inputs, the
feed-forward and delay-line program), so a phase sends only what differs
from the last (a repeated circuit sends only its shots, a sweep only its
heaters). It also keeps the HAL's *state version* of the device as it left
it: every change carries the version the previous one made
(``expect_version``), and so does every shot batch and photodiode read. If
anyone else changed the device in between, the HAL refuses the request under
the device's lock (``state-changed``), and the executor sets the device up
again from scratch (decision 0011). A HAL event about the device, a retry
after a failure and an interruption all make it forget what it set.

Transient errors (the link, a slow reply, a device error from a glitch) are
tried again after an exponential backoff with jitter (`protocol.Backoff`,
``backoff_s`` doubling to ``backoff_max_s``), up to ``retries`` times; an
interlock fails the job at once; the HAL lost altogether interrupts it.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import trio

from protocol import AwenError, Backoff, ErrorCode
from protocol.calibration_model import CalibrationModel
from protocol.hal import (
    ConfigureInputs,
    DeviceStatus,
    GetDeviceStatus,
    Program,
    ReadPowers,
    RunShots,
    SafeState,
    SetHeaters,
)
from protocol.mesh import clements_layout
from protocol.plan import Phase
from runtime import Actor, PeerLostError, RemoteError, RequestTimeout

from ._config import ExecutorConfig
from ._faults import GONE, TRANSIENT, Failed, PeerDown
from ._volts import PhaseVolts

log = logging.getLogger("awen.executor")

SETTLE_CHECKS = 100
"""How often the device is asked whether its heaters settled (1 ms apart) before the phase goes on anyway."""


class ChangedElsewhere(Exception):
    """Someone else changed the device while this executor was setting it up."""


class HalDevice:
    """The one device an executor runs jobs on, as this executor last set it.

    Attributes:
        version: The HAL's state version of the device as this executor left
            it (None: unknown, set everything next time).
        failing: Components that misbehaved since the phase began (``mode:3``:
            a heater of that mode read back other than it was set), for the
            scheduler's feedback; the caller clears it.
    """

    def __init__(self, actor: Actor, config: ExecutorConfig, volts: PhaseVolts) -> None:
        self.actor = actor
        self.config = config
        self.volts = volts
        self.backoff = Backoff(first=config.backoff_s, longest=config.backoff_max_s)
        self.version: int | None = None
        self.failing: set[str] = set()
        self._heaters: np.ndarray | None = None
        self._setup: tuple[Any, ...] | None = None
        """Inputs, feed-forward modes and rules, delay lines: what the program and inputs were set to."""
        self._rng = random.Random()

    @property
    def name(self) -> str:
        return self.config.device

    def forget(self) -> None:
        """The device may not be as last set (safe state, reconnect, interlock): set everything next time."""
        self._setup = None
        self._heaters = None
        self.version = None

    async def _hal(self, request: Any) -> Any:
        return await self.actor.request(self.config.hal, request)

    # --- set-up -------------------------------------------------------------------------------

    async def configure(self, plan: str, phase: Phase, model: CalibrationModel | None) -> tuple[float, int]:
        """Set the device up for a phase, sending only what differs from how this executor left it.

        Each change carries the state version the previous one made, so a
        change by anyone else in between is caught by the HAL (``state-changed``):
        then everything is sent again. Returns the seconds it took and the retries.
        """
        began = time.monotonic()
        retries = 0
        for attempt in range(self.config.retries + 1):
            try:
                retries += await self._configure_once(plan, phase, model)
                return time.monotonic() - began, retries
            except ChangedElsewhere as exc:
                if attempt == self.config.retries:
                    raise Failed(f"phase {phase.index}: {exc} after {attempt + 1} tries") from None
                log.warning("%s: %s; setting the device up again", self.actor.name, exc)
                self.forget()
                retries += 1
        raise AssertionError("unreachable")

    async def _configure_once(self, plan: str, phase: Phase, model: CalibrationModel | None) -> int:
        retries = 0
        volts = self.volts.for_phase(plan, phase, model)
        if volts is not None and self._heaters is not None and np.array_equal(volts, self._heaters):
            volts = None  # the heaters are there already (the same configuration as the last phase or job)
        # The version chain is kept here, not in self.version, which a device event may clear meanwhile.
        version = self.version
        if volts is not None:
            self._heaters = None
            request = SetHeaters(device=self.name, volts=volts, expect_version=version)
            heaters, tries = await self._change(request, "setting the heaters")
            retries += tries
            version = heaters.version
            if heaters.mismatched:  # the device is not where it was set: tell the scheduler which modes, set it again
                layout = clements_layout(math.isqrt(len(volts)))
                self.failing.update(f"mode:{m}" for h in heaters.mismatched for m in layout.modes_of(h))
            else:
                self._heaters = volts
        rules = {b.pattern: b.phases for b in phase.branches if b.phases}
        setup = (phase.inputs, phase.ff_modes, rules, phase.delay_lines)
        if setup != self._setup:  # a sweep changes only the heaters: the rest is sent once
            self._setup = None
            inputs = ConfigureInputs(device=self.name, inputs=phase.inputs, clear=True, expect_version=version)
            configured, tries = await self._change(inputs, "configuring the inputs")
            retries += tries
            program = Program(
                device=self.name,
                ff_modes=phase.ff_modes,
                rules=rules,
                delay_lines=phase.delay_lines,
                expect_version=configured.version,
            )
            configured, tries = await self._change(program, "programming feed-forward and delay lines")
            retries += tries
            version = configured.version
            self._setup = setup
        self.version = version
        if volts is not None:  # heaters changed: let them settle (unchanged ones settled long ago)
            await trio.sleep(phase.settle_s)
            await self._settled()
        return retries

    async def _change(self, request: Any, what: str) -> tuple[Any, int]:
        """A change of the device's state, retried on transient errors; `ChangedElsewhere` if another changed it."""
        try:
            return await self.retry(lambda: self._hal(request), what, state_changed=True)
        except RemoteError as exc:
            raise ChangedElsewhere(f"{what}: {exc.message}") from None

    async def _settled(self) -> None:
        """Until the device says its heaters have settled (the phases are where they were set)."""
        for _ in range(SETTLE_CHECKS):
            status = await self._hal(GetDeviceStatus(device=self.name))
            if status.settled:
                return
            await trio.sleep(0.001)
        log.warning("%s: %s did not report settled heaters; going on", self.actor.name, self.name)

    # --- readings -----------------------------------------------------------------------------

    async def shots(self, n: int) -> Any:
        """A batch of shots, only on the device as this executor set it (else ``state-changed``)."""
        return await self._hal(RunShots(device=self.name, shots=n, expect_version=self.version))

    async def read_powers(self) -> Any:
        """The photodiodes, only on the device as this executor set it (else ``state-changed``)."""
        return await self._hal(ReadPowers(device=self.name, expect_version=self.version))

    async def status(self) -> DeviceStatus:
        status: DeviceStatus = await self._hal(GetDeviceStatus(device=self.name))
        return status

    async def safe(self) -> None:
        """Put the device in its safe state; a failure is logged, not raised (the job ends either way)."""
        self.forget()
        try:
            with trio.fail_after(10):
                await self._hal(SafeState(device=self.name))
        except (AwenError, trio.TooSlowError) as exc:
            log.error("%s: could not put %s in its safe state: %s", self.actor.name, self.name, exc)

    # --- trying again -------------------------------------------------------------------------

    async def retry(
        self,
        call: Callable[[], Awaitable[Any]],
        what: str,
        again: Callable[[], Awaitable[Any]] | None = None,
        *,
        state_changed: bool = False,
    ) -> tuple[Any, int]:
        """``await call()`` (a HAL request), again after transient errors with backoff and jitter; (result, retries).

        Before another try, ``await again()`` if given: shots are fired again
        only on a device set up again, in case the failure reset it. With
        ``state_changed``, a ``state-changed`` refusal is raised at once (the
        caller sets the device up again) rather than tried again as it was.
        The HAL lost altogether interrupts the job (`PeerDown`): it resumes
        once the HAL is back, however long that takes.
        """
        for attempt in range(self.config.retries + 1):
            if attempt:
                self.forget()  # a link that failed may have been reopened: set it all again
                if again is not None:
                    await again()
            try:
                return await call(), attempt
            except RemoteError as exc:
                if state_changed and exc.code == ErrorCode.STATE_CHANGED:
                    raise
                if exc.code in GONE:
                    raise PeerDown(self.config.hal, f"{what}: {exc.message}") from None
                if exc.code == ErrorCode.INTERLOCK:
                    raise Failed(f"{what}: the interlock tripped ({exc.message})") from None
                if exc.code not in TRANSIENT or attempt == self.config.retries:
                    raise Failed(f"{what}: {exc.message} [{exc.code}] after {attempt + 1} tries") from None
                why = f"{what} failed ({exc})"
            except PeerLostError as exc:
                raise PeerDown(self.config.hal, f"{what}: {exc}") from None
            except RequestTimeout as exc:
                if attempt == self.config.retries:
                    raise Failed(f"{what}: {exc} after {attempt + 1} tries") from None
                why = f"{what}: {exc}"
            delay = self.backoff.delay(attempt, self._rng)
            log.warning("%s: %s; retrying in %.2f s", self.actor.name, why, delay)
            await trio.sleep(delay)
        raise AssertionError("unreachable")
