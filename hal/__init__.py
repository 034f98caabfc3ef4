"""The hardware abstraction layer: the only code that touches a device.

`ManagedDevice` keeps one device safe and reachable: limits checked before the
wire, read-back after every write, its host watchdog armed and fed, its
interlock watched, its safe state on the way out. `HalConfig` is the device
registry. The HAL actor (`actors.hal`) puts this on the message bus. This
package may import `drivers` and `protocol`, never `actors`.
"""

from ._config import DeviceConfig as DeviceConfig
from ._config import HalConfig as HalConfig
from ._config import load_hal_config as load_hal_config
from ._config import parse_hal_config as parse_hal_config
from ._device import ManagedDevice as ManagedDevice

__all__ = [name for name in dir() if not name.startswith("_")]
