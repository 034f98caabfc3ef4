"""Machine-readable schema of every message, generated from the declarations."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from ._codec import Catalog
from ._errors import ErrorCode
from ._message import PROTOCOL_VERSION, Envelope, Request
from ._ndarray import NDARRAY_EXT

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _schema_hook(type_: type) -> dict[str, Any]:
    if type_ is np.ndarray:
        return {
            "description": (
                f"numpy array: MessagePack ext type {NDARRAY_EXT} whose payload is the MessagePack "
                "array [dtype: str, shape: [uint], data: bin]"
            ),
            "x-msgpack-ext": NDARRAY_EXT,
        }
    raise TypeError(f"{type_!r} has no schema: declare message fields with msgspec-supported types")


def protocol_schema(catalog: Catalog) -> dict[str, Any]:
    """A JSON Schema document describing the envelope and every message body.

    ``messages`` maps each type name to its kind, its body schema and, for a
    request, the type of its reply.
    """
    types = list(catalog)
    (envelope_ref, *body_refs), defs = msgspec.json.schema_components(
        [Envelope, *types], schema_hook=_schema_hook, ref_template="#/$defs/{name}"
    )
    envelope_def = defs[Envelope.__name__]
    envelope_def["properties"]["type"]["enum"] = catalog.names()
    envelope_def["properties"]["body"] = {"description": "The body: its schema is messages[type].body"}
    # ``re`` is always written, and read when absent too
    envelope_def["required"] = [name for name in envelope_def["required"] if name != "re"]
    messages: dict[str, Any] = {}
    for cls, ref in zip(types, body_refs, strict=True):
        entry: dict[str, Any] = {"kind": cls.KIND, "body": ref}
        doc = (cls.__doc__ or "").strip().split("\n\n")[0]
        if doc:
            entry["description"] = " ".join(doc.split())
        if issubclass(cls, Request):
            entry["reply"] = cls.REPLY.TYPE
        messages[cls.TYPE] = entry
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"https://awen.invalid/protocol/v{PROTOCOL_VERSION}.json",
        "title": "awen message protocol",
        "version": PROTOCOL_VERSION,
        "encoding": "MessagePack; one envelope per ZeroMQ message frame",
        "envelope": envelope_ref,
        "error_codes": {code.value: code.meaning for code in ErrorCode},
        "messages": dict(sorted(messages.items())),
        "$defs": defs,
    }
