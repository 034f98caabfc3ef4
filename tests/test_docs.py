"""The documentation stays true to the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

from protocol import Codec, ErrorCode, make_envelope
from protocol.catalog import CATALOG
from protocol.system import Ping, Pong

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_protocol_doc_lists_every_message_type_and_error_code():
    text = (DOCS / "protocol.md").read_text()
    missing_types = [name for name in CATALOG.names() if f"`{name}`" not in text]
    missing_codes = [code.value for code in ErrorCode if f"`{code.value}`" not in text]
    assert missing_types == []
    assert missing_codes == []


def hex_block(text: str, after: str) -> bytes:
    """The bytes of the annotated hex dump that follows ``after`` in the doc."""
    block = text.split(after, 1)[1].split("```", 2)[1]
    hex_pairs: list[str] = []
    for line in block.splitlines():
        for token in line.split():  # hex columns first, then the annotation
            if not re.fullmatch(r"[0-9a-f]{2}", token):
                break
            hex_pairs.append(token)
    return bytes.fromhex(" ".join(hex_pairs))


def test_protocol_doc_hex_dumps_are_the_real_frames():
    text = (DOCS / "protocol.md").read_text()
    codec = Codec(CATALOG)
    request = codec.encode(make_envelope(Ping(data=b"hi"), sender="client", to="alpha", id=1, ts=1700000000.0))
    reply = codec.encode(
        make_envelope(
            Pong(data=b"hi", pid=4242, incarnation=7), sender="alpha", to="client", id=9, re=1, ts=1700000000.25
        )
    )
    assert hex_block(text, "The request (74 bytes):") == request
    assert hex_block(text, "The reply from `alpha` (94 bytes)") == reply


def test_docs_link_only_to_files_that_exist():
    root = DOCS.parent
    for page in [root / "README.md", *DOCS.rglob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(root)} links to missing {target}"


def test_device_protocol_doc_lists_every_command():
    from protocol.photonica import COMMANDS

    text = (DOCS / "device-protocol.md").read_text()
    missing = [c.short for c in COMMANDS if f"`{c.short}" not in text]
    assert missing == []
    for command in COMMANDS:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{command.short}"))
        assert row.rstrip().endswith("| yes |" if command.idempotent else "| no |"), row


def test_simulator_doc_names_every_top_level_setting():
    from sim import SimConfig

    text = (DOCS / "simulator.md").read_text()
    sections = [f for f in SimConfig.__struct_fields__ if f not in ("seed", "clock", "command_s", "faults")]
    assert [f for f in sections if f"`{f}" not in text] == []
