"""Every message type awen's actors exchange: the system's and each actor's.

The actor runtime knows only its own messages (`protocol.SYSTEM_CATALOG`);
whoever starts or speaks to the lab's actors passes this catalog to it (a
system file names it: ``catalog = "protocol.catalog:CATALOG"``, the default).
"""

from . import calibration, door, executor, hal, memory, scheduler
from ._codec import Catalog
from .system import SYSTEM_MESSAGES

CATALOG = Catalog(
    [
        *SYSTEM_MESSAGES,
        *hal.HAL_MESSAGES,
        *memory.MEMORY_MESSAGES,
        *scheduler.SCHEDULER_MESSAGES,
        *executor.EXECUTOR_MESSAGES,
        *calibration.CALIBRATION_MESSAGES,
        *door.DOOR_MESSAGES,
    ]
)
"""Every message type awen's actors exchange."""
