"""The door: the one address clients use (decision 0014).

`DoorActor` (factory ``actors.door:DoorActor``) binds a gateway on the data
directory's ipc socket and a loopback port, forwards the allowlisted requests
of `protocol.door.FORWARDED`, answers the ``door.*`` requests and pushes the
events a client subscribed to.
"""

from ._actor import DoorActor as DoorActor
from ._actor import DoorConfig as DoorConfig

__all__ = [name for name in dir() if not name.startswith("_")]
