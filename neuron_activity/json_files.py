"""JSON files nact reads (SAE configs, a sparsity file's ``cfg.json``, a delphi module's
``config.json``, a datasets cache's ``state.json``), read one way: only a regular file (or an
object of a store) of at most ``MAX_JSON_BYTES``, and every problem one ``BadInput``. A FIFO or
a device is never opened (it would block or never end), and JSON nested too deep for the
parser (its RecursionError) is refused, never crashed on. ``parse_json`` is the same for JSON
text already read (a header's metadata)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import BadInput, first_line
from .remote.objects import RemotePath, info, read_range

MAX_JSON_BYTES = 16 * 1024 * 1024  # a config or a state.json is kilobytes


def parse_json(raw: bytes | str, path: object) -> Any:
    """``raw`` parsed, or BadInput naming ``path``."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadInput(path, "not JSON nact reads: nested too deep") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise BadInput(path, f"not JSON: {first_line(e)}") from None


def read_json_value(path: Path | RemotePath) -> Any:
    """The JSON value in the file (or object) ``path``; see the module's docstring."""
    if isinstance(path, RemotePath):
        size = info(path).size  # BadInput when there is no such object
        if size > MAX_JSON_BYTES:
            raise BadInput(path, f"{size} bytes, more than {MAX_JSON_BYTES >> 20} MiB: not a config")
        return parse_json(read_range(path, 0, size), path)
    try:
        found = os.stat(path)
    except FileNotFoundError:
        raise BadInput(path, "no such file") from None
    except OSError as e:
        raise BadInput(path, f"cannot read: {e.strerror or first_line(e)}") from None
    if not stat.S_ISREG(found.st_mode):
        raise BadInput(path, "not a regular file (a device, FIFO or folder): a config is a JSON file")
    if found.st_size > MAX_JSON_BYTES:
        raise BadInput(path, f"{found.st_size} bytes, more than {MAX_JSON_BYTES >> 20} MiB: not a config")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise BadInput(path, f"cannot read: {e.strerror or first_line(e)}") from None
    if len(raw) > MAX_JSON_BYTES:  # it grew since it was looked at
        raise BadInput(path, f"more than {MAX_JSON_BYTES >> 20} MiB: not a config")
    return parse_json(raw, path)


def read_json(path: Path | RemotePath) -> dict[str, Any]:
    """The JSON object in ``path`` (a config): as ``read_json_value``, and it must be an object."""
    value = read_json_value(path)
    if not isinstance(value, dict):
        raise BadInput(path, "not a JSON object")
    return value
