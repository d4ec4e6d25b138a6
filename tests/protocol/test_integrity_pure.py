"""The issue-17 cores stay sans-I/O: no socket, file, clock, process or random import.

Checked on the source (AST), so a new import of ``time`` or ``os`` fails here before it can
sneak a clock read or a file access into a module the engine treats as pure.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import bgtransfer._protocol as protocol

MODULES = ["_digest", "_signed", "_pieces", "_metalink", "_mirrors", "_sidecar", "_sums"]
ALLOWED = {
    "__future__",
    "base64",
    "binascii",
    "calendar",  # timegm: date arithmetic, not a clock read
    "collections",
    "dataclasses",
    "enum",
    "hashlib",
    "hmac",
    "json",
    "math",
    "posixpath",  # string functions on paths; no file access
    "re",
    "typing",
    "urllib",
    "xml",  # the Element type only: parsing goes through defusedxml
    "defusedxml",
    "http_sfv",
    "google_crc32c",
    "bgtransfer",
    "mutmut",  # only in `make mutate`'s instrumented copy of the sources
}
FORBIDDEN_BGTRANSFER = ("bgtransfer._engine", "bgtransfer._store", "bgtransfer._daemon")


def imports(name: str) -> list[str]:
    tree = ast.parse(Path(protocol.__file__).with_name(f"{name}.py").read_text())
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
    return out


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_nothing_that_does_io(name):
    found = imports(name)
    assert found  # the parse saw the module's imports
    for module in found:
        assert module.split(".")[0] in ALLOWED, f"{name} imports {module}"
        assert not module.startswith(FORBIDDEN_BGTRANSFER), f"{name} imports {module}"
        assert module not in ("xml.dom.minidom", "xml.sax"), f"{name} parses XML unsafely"


def test_metalink_parses_only_through_defusedxml():
    source = Path(protocol.__file__).with_name("_metalink.py").read_text()
    assert not re.search(r"(?<![A-Za-z])ET\.(fromstring|parse|XMLParser)", source)
    assert "SafeET.fromstring" in source
