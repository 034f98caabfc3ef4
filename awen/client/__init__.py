"""awen's Python client: scripts, notebooks and the ``awen`` commands talk to a running lab through it.

``awen.connect()`` gives a blocking `Lab` (any thread, a Jupyter notebook
too); ``awen.open_lab()`` is the trio form, an async context manager giving
an `AsyncLab`. Both speak the documented client protocol (`protocol.door`,
docs/client.md) to the daemon's door.
"""

from ._blocking import Job as Job
from ._blocking import Lab as Lab
from ._blocking import connect as connect
from ._errors import CircuitRefused as CircuitRefused
from ._errors import ClientError as ClientError
from ._errors import DaemonUnreachable as DaemonUnreachable
from ._errors import JobFailed as JobFailed
from ._errors import JobNotFound as JobNotFound
from ._errors import KeyConflict as KeyConflict
from ._errors import NotFound as NotFound
from ._errors import RequestRefused as RequestRefused
from ._errors import WaitTimeout as WaitTimeout
from ._lab import AsyncJob as AsyncJob
from ._lab import AsyncLab as AsyncLab
from ._lab import open_lab as open_lab
from ._result import Result as Result

__all__ = [name for name in dir() if not name.startswith("_")]
