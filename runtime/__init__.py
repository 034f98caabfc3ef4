"""The actor runtime: actors on trio, messages over ZeroMQ or memory channels, supervision.

An actor is a trio task with a mailbox (`Actor`); a `Supervisor` runs a set of
them, in one process or as child processes, and restarts the ones that crash.
A system file (`load_system`) says which actors, where they listen and how
they are restarted; `open_system` runs one.

The public API: `Actor`, `handles`, `subscribes` and what an actor is given
(`Runtime`, `RuntimeOptions`, `Directory`, `Address`, `LocalNetwork`); the
errors of talking to other actors; a system (`SystemConfig`, `ActorSpec`,
`RestartPolicy`, `load_system`, `parse_system`, `ResolvedSystem`,
`Supervisor`, `open_system`, `SupervisorGaveUp`); logging for the command line.

Inside (private modules, one concept each): `_actor` wires an actor's parts:
`_mailbox` (what arrives, dispatched through `_handlers`), `_requests` (what
it asks, and the replies), `_events` (publish and subscribe), `_liveness`
(heartbeats, peers), `_lifecycle`; `_transport` opens endpoints by address
scheme, `_zmq` marries pyzmq to trio; `_supervisor`, `_system`, `_config`,
`_errors`, `_logging`; `worker` is an actor process's entry point.
"""

from ._actor import Actor as Actor
from ._config import Address as Address
from ._config import Directory as Directory
from ._config import Runtime as Runtime
from ._config import RuntimeOptions as RuntimeOptions
from ._connection import Connection as Connection
from ._errors import ActorStoppedError as ActorStoppedError
from ._errors import PeerLostError as PeerLostError
from ._errors import RemoteError as RemoteError
from ._errors import RequestTimeout as RequestTimeout
from ._errors import UnknownPeer as UnknownPeer
from ._gateway import Gateway as Gateway
from ._handlers import handles as handles
from ._handlers import subscribes as subscribes
from ._logging import configure_logging as configure_logging
from ._logging import describe_failure as describe_failure
from ._logging import first_awen_error as first_awen_error
from ._metrics import Metrics as Metrics
from ._supervisor import Supervisor as Supervisor
from ._supervisor import SupervisorGaveUp as SupervisorGaveUp
from ._supervisor import open_system as open_system
from ._system import ActorSpec as ActorSpec
from ._system import ResolvedSystem as ResolvedSystem
from ._system import RestartPolicy as RestartPolicy
from ._system import SystemConfig as SystemConfig
from ._system import load_system as load_system
from ._system import parse_system as parse_system
from ._trace import current_job as current_job
from ._trace import current_trace as current_trace
from ._trace import traced as traced
from ._transport import LocalNetwork as LocalNetwork

__all__ = [name for name in dir() if not name.startswith("_")]
