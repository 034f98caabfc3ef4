"""The outcome of one calibration, shared by every request that waits for it."""

from __future__ import annotations

import trio

from protocol import AwenError
from protocol.calibration import Calibrated


class Outcome:
    """One calibration's result or error, set once; `wait` until then, from any number of tasks.

    A request that arrives while a calibration runs waits here instead of
    running another one after it (decision 0014 §4, "Reconnect": a re-sent
    ``cal.calibrate`` is answered by the calibration its first sending began).
    """

    def __init__(self) -> None:
        self._done = trio.Event()
        self._result: Calibrated | None = None
        self._error: AwenError | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def succeed(self, result: Calibrated) -> None:
        assert not self.done
        self._result = result
        self._done.set()

    def fail(self, error: AwenError) -> None:
        assert not self.done
        self._error = error
        self._done.set()

    async def wait(self) -> Calibrated:
        """The calibration's result once it has ended; its error (a copy for each waiter) if it failed."""
        await self._done.wait()
        if self._error is not None:
            raise _copy(self._error)
        assert self._result is not None
        return self._result


def _copy(error: AwenError) -> AwenError:
    """A copy of ``error`` to raise in one more task (of any subclass, whatever its ``__init__`` takes)."""
    cls = type(error)
    copied = cls.__new__(cls, *error.args)
    copied.args = error.args
    copied.__dict__.update(error.__dict__)
    return copied
