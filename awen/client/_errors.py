"""What a client raises: one class per thing a user would handle differently."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocol import AwenError, ErrorCode

if TYPE_CHECKING:
    from ._result import Result


class ClientError(AwenError):
    """Root of the client's errors; ``code`` is the daemon's error code where it sent one."""


class DaemonUnreachable(ClientError):
    """No daemon answered. ``looked``: each place tried, and what was found there."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, looked: list[tuple[str, str]]) -> None:
        self.looked = looked
        places = "; ".join(f"{where}: {what}" for where, what in looked)
        super().__init__(f"no awen daemon answered ({places}); start one with `awen up`")


class CircuitRefused(ClientError):
    """The lab refused the circuit; ``problems`` lists every one, each with its op."""

    code = ErrorCode.INVALID_CIRCUIT

    def __init__(self, message: str, problems: list[dict[str, Any]]) -> None:
        self.problems = problems
        lines = [
            f"op {p.get('op')}: {p.get('message')}" if p.get("op") is not None else str(p.get("message"))
            for p in problems
        ]
        super().__init__(message if not lines else "the circuit was refused: " + "; ".join(lines))


class KeyConflict(ClientError):
    """The key names another submission (``exists``): a key names one request, forever."""

    code = ErrorCode.EXISTS


class NotFound(ClientError):
    """What was asked for is not there: a calibration version, a device, a plan."""

    code = ErrorCode.NOT_FOUND


class JobNotFound(NotFound):
    """No job by that id in the lab's store."""


class JobFailed(ClientError):
    """The job failed or was cancelled; its partial results are in `result`."""

    def __init__(self, job: str, state: str, reason: str, result: Result) -> None:
        self.job = job
        self.state = state
        self.reason = reason
        self._result = result
        super().__init__(f"job {job} {state}" + (f": {reason}" if reason else ""))

    def result(self) -> Result:
        """What the job committed before it ended (``partial``)."""
        return self._result


class WaitTimeout(ClientError):
    """The wait's timeout passed; the job goes on."""

    code = ErrorCode.TIMEOUT


class RequestRefused(ClientError):
    """The daemon refused a request for another reason; ``code`` says which."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.code = code  # type: ignore[assignment]  # the daemon's code, as it sent it
