"""The memory actor: typed result slots with one writer per frame, and a store that loses nothing.

`MemoryActor` (factory ``actors.memory:MemoryActor``) answers the ``mem.*``
messages of `protocol.memory`; `SlotTable` and `Store` are its two halves,
usable on their own (tests, the ``awen store`` commands).
"""

from ._actor import MemoryActor as MemoryActor
from ._actor import MemoryConfig as MemoryConfig
from ._actor import default_data_dir as default_data_dir
from ._actor import open_store as open_store
from ._slots import BadValue as BadValue
from ._slots import MemoryLimit as MemoryLimit
from ._slots import SlotConflict as SlotConflict
from ._slots import SlotTable as SlotTable
from ._store import MIGRATIONS as MIGRATIONS
from ._store import SCHEMA_VERSION as SCHEMA_VERSION
from ._store import Migration as Migration
from ._store import Store as Store

__all__ = [name for name in dir() if not name.startswith("_")]
