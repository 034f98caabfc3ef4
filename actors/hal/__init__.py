"""The HAL: the only code that touches a device, and the actor that puts it on the bus.

`ManagedDevice` is the safety policy over one device's driver: limits checked
before the wire, read-back after every write, its host watchdog armed and fed,
its interlock watched, its safe state on the way out, every decision made
under the device's lock. `HalConfig` is the device registry. `HalActor`
answers ``hal.*`` requests with them.
"""

from ._actor import HalActor as HalActor
from ._config import DeviceConfig as DeviceConfig
from ._config import HalConfig as HalConfig
from ._config import load_hal_config as load_hal_config
from ._config import parse_hal_config as parse_hal_config
from ._device import ManagedDevice as ManagedDevice

__all__ = [name for name in dir() if not name.startswith("_")]
