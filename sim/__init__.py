"""The Photonica device simulator: physics in numpy, the device protocol on the wire.

Import what you need to check the physics against another tool::

    from sim import output_distribution, clements, mesh_unitary

`Device` is the simulated controller (sans-IO); `serve_tcp` and `serve_pty`
put it on a TCP port or a pseudo-terminal (``awen sim serve``). Given a
``record`` (a file or a callback), a device writes an audit record of every
change that reached its chip (`RecordEntry`, `read_record`, `record_violations`). This package
imports only `protocol`: it is a separate program that speaks the same wire
protocol as the hardware.
"""

from protocol.mesh import clements as clements
from protocol.mesh import mesh_unitary as mesh_unitary
from protocol.mesh import mzi as mzi

from ._boson import lossy_probabilities as lossy_probabilities
from ._boson import output_distribution as output_distribution
from ._boson import output_probabilities as output_probabilities
from ._boson import permanent_amplitudes as permanent_amplitudes
from ._config import IDEAL_SOURCE as IDEAL_SOURCE
from ._config import PUBLISHED_SOURCE as PUBLISHED_SOURCE
from ._config import FaultConfig as FaultConfig
from ._config import SimConfig as SimConfig
from ._config import SimConfigError as SimConfigError
from ._config import load_config as load_config
from ._config import parse_config as parse_config
from ._config import parse_fault as parse_fault
from ._control import SimControl as SimControl
from ._control import SimControlError as SimControlError
from ._control import serve_control as serve_control
from ._device import Device as Device
from ._factory import chip_of as chip_of
from ._factory import factory_calibration as factory_calibration
from ._factory import write_factory_calibration as write_factory_calibration
from ._record import RecordEntry as RecordEntry
from ._record import RecordFile as RecordFile
from ._record import read_record as read_record
from ._record import record_violations as record_violations
from ._sampling import clifford_clifford as clifford_clifford
from ._sampling import sample_ideal as sample_ideal
from ._server import DeviceServer as DeviceServer
from ._server import InProcessStream as InProcessStream
from ._server import serve_pty as serve_pty
from ._server import serve_tcp as serve_tcp
from ._source import SourceError as SourceError
from ._source import SourceModel as SourceModel
from ._source import click_distribution as click_distribution

__all__ = [name for name in dir() if not name.startswith("_")]
