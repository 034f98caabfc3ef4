"""Device drivers: the Photonica device protocol over serial, TCP and the in-process simulator.

`open_driver(url)` gives a connected `PhotonicaDriver` for ``tcp://HOST:PORT``,
``serial:///dev/ttyUSB0?baud=115200`` or ``sim://?seed=1&modes=8``. Drivers
may import `protocol`, and start the simulator for a ``sim://`` URL; nothing
above them.
"""

from ._endpoint import Endpoint as Endpoint
from ._endpoint import endpoint_from_url as endpoint_from_url
from ._lock import held as held
from ._photonica import IdentityChanged as IdentityChanged
from ._photonica import PhotonicaDriver as PhotonicaDriver
from ._photonica import ReconnectPolicy as ReconnectPolicy
from ._photonica import open_driver as open_driver
from ._photonica import shots_timeout as shots_timeout

__all__ = [name for name in dir() if not name.startswith("_")]
