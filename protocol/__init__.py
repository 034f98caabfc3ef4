"""The awen wire protocol: envelope, message declarations, codec, errors.

Everything both sides of a wire must agree on lives here, and nothing here does
I/O. See docs/protocol.md for the wire format.

This package's own namespace is the wire itself (the envelope, the codec, the
errors, the numpy ext type, the runtime's system messages): what the actor
runtime needs and all it may use. Each actor's messages are a module of their
own (`protocol.hal`, `protocol.memory`, ...), and `protocol.catalog.CATALOG`
assembles them all, for whoever speaks to the actors.
"""

from . import system as system
from ._backoff import Backoff as Backoff
from ._codec import DEFAULT_MAX_FRAME_BYTES as DEFAULT_MAX_FRAME_BYTES
from ._codec import MAX_ERROR_TEXT as MAX_ERROR_TEXT
from ._codec import MAX_FIELD_PATH as MAX_FIELD_PATH
from ._codec import Catalog as Catalog
from ._codec import Codec as Codec
from ._codec import make_envelope as make_envelope
from ._errors import AwenError as AwenError
from ._errors import ConfigError as ConfigError
from ._errors import DeviceError as DeviceError
from ._errors import ErrorCode as ErrorCode
from ._errors import Exists as Exists
from ._errors import FrameTooLarge as FrameTooLarge
from ._errors import IllegalTransition as IllegalTransition
from ._errors import InterlockError as InterlockError
from ._errors import InvalidMessage as InvalidMessage
from ._errors import LinkError as LinkError
from ._errors import MalformedFrame as MalformedFrame
from ._errors import NotFound as NotFound
from ._errors import NotReady as NotReady
from ._errors import ProtocolError as ProtocolError
from ._errors import SafetyLimitError as SafetyLimitError
from ._errors import StateChanged as StateChanged
from ._errors import StoreFull as StoreFull
from ._errors import StoreUnavailable as StoreUnavailable
from ._errors import UnknownMessageType as UnknownMessageType
from ._errors import UnsupportedVersion as UnsupportedVersion
from ._files import convert_settings as convert_settings
from ._files import load_settings as load_settings
from ._files import toml_text as toml_text
from ._message import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._message import SUPPORTED_VERSIONS as SUPPORTED_VERSIONS
from ._message import Envelope as Envelope
from ._message import Event as Event
from ._message import Message as Message
from ._message import Notice as Notice
from ._message import Reply as Reply
from ._message import Request as Request
from ._ndarray import MAX_NDIM as MAX_NDIM
from ._ndarray import NDARRAY_DTYPES as NDARRAY_DTYPES
from ._ndarray import NDARRAY_EXT as NDARRAY_EXT
from ._ndarray import decode_ndarray as decode_ndarray
from ._ndarray import encode_ndarray as encode_ndarray
from ._ndarray import pack as pack
from ._ndarray import unpack as unpack
from ._ndarray import unpack_as as unpack_as
from ._schema import protocol_schema as protocol_schema
from ._structure import MAX_DEPTH as MAX_DEPTH
from ._structure import MAX_VALUES as MAX_VALUES
from ._text import clip as clip
from .system import SYSTEM_MESSAGES as SYSTEM_MESSAGES

SYSTEM_CATALOG = Catalog(SYSTEM_MESSAGES)
"""The runtime's own messages (``sys.*``, ``peer.*``, ``actor.*``): what every actor speaks."""

__all__ = [name for name in dir() if not name.startswith("_")]
