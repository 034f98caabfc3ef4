"""Device drivers: the Photonica device protocol over serial, TCP and the in-process simulator.

`open_driver(url)` gives a connected `PhotonicaDriver` for ``tcp://HOST:PORT``,
``serial:///dev/ttyUSB0?baud=115200`` or ``sim://?seed=1&modes=8``: the
device's commands as typed methods (``read_heaters()``, ``run_shots(n)``, ...),
several commands as one message with a `Batch`, a link that reconnects by
itself (`ReconnectPolicy`) and refuses another device behind the same address
(`IdentityChanged`). Drivers may import `protocol`, and start the simulator
for a ``sim://`` URL; nothing above them.
"""

from ._endpoint import Endpoint as Endpoint
from ._endpoint import endpoint_from_url as endpoint_from_url
from ._link import IdentityChanged as IdentityChanged
from ._link import ReconnectPolicy as ReconnectPolicy
from ._photonica import Batch as Batch
from ._photonica import PhotonicaDriver as PhotonicaDriver
from ._photonica import ShotCounts as ShotCounts
from ._photonica import open_driver as open_driver

__all__ = [name for name in dir() if not name.startswith("_")]
