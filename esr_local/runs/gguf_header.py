"""Read a GGUF file's key/value header (architecture, layer count, width) without loading the weights."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import FormatError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_STRING = 1 << 26  # no header string is anywhere near 64 MiB; a larger length means a corrupt file
_MAX_DEPTH = 4  # arrays of arrays nest no deeper than this in a real file; deeper is corrupt (not a RecursionError)


def _read(fh: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = fh.read(size)
    if len(data) != size:
        raise EOFError
    return struct.unpack(fmt, data)[0]


def _string(fh: BinaryIO) -> str:
    n = _read(fh, "<Q")
    if n > _MAX_STRING:
        raise EOFError
    data = fh.read(n)
    if len(data) != n:
        raise EOFError
    return data.decode("utf-8", "replace")


def _value(fh: BinaryIO, kind: int, keep: bool, depth: int = 0) -> Any:
    if kind in _SCALARS:
        return _read(fh, _SCALARS[kind])
    if kind == _STRING:
        return _string(fh)
    if kind == _ARRAY:
        if depth >= _MAX_DEPTH:
            raise FormatError(f"GGUF arrays nested more than {_MAX_DEPTH} deep")
        item, n = _read(fh, "<I"), _read(fh, "<Q")
        if item in _SCALARS and not keep:  # skip large numeric arrays (token scores) in one seek
            fh.seek(struct.calcsize(_SCALARS[item]) * n, 1)
            return None
        if not keep:  # skipped: nothing is kept, so a huge count costs no memory (reads end at EOF)
            for _ in range(n):
                _value(fh, item, keep, depth + 1)
            return None
        return [_value(fh, item, keep, depth + 1) for _ in range(n)]
    raise FormatError(f"unknown GGUF value type {kind}")


def read_gguf_header(path: str | Path) -> dict[str, Any]:
    """The scalar and string metadata of a GGUF file (arrays are skipped)."""
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            if fh.read(4) != b"GGUF":
                raise FormatError(f"{path} is not a GGUF file (bad magic); pass a .gguf model file")
            _version, _n_tensors, n_kv = _read(fh, "<I"), _read(fh, "<Q"), _read(fh, "<Q")
            meta: dict[str, Any] = {}
            for _ in range(n_kv):
                key = _string(fh)
                kind = _read(fh, "<I")
                value = _value(fh, kind, keep=False)
                if value is not None:
                    meta[key] = value
        except EOFError:
            raise FormatError(f"{path} is truncated or corrupt (its GGUF header ends early)") from None
        except FormatError as exc:
            if str(path) in str(exc):
                raise
            raise FormatError(f"{path} is corrupt ({exc}); pass a .gguf model file") from None
    return meta


def model_dims(path: str | Path) -> tuple[int, int]:
    """(n_layer, n_embd) of a GGUF model from its header."""
    meta = read_gguf_header(path)
    arch = meta.get("general.architecture")
    try:
        return int(meta[f"{arch}.block_count"]), int(meta[f"{arch}.embedding_length"])
    except (KeyError, TypeError, ValueError):
        raise FormatError(f"{path} does not say its layer count and width ({arch}.block_count, "
                          f"{arch}.embedding_length); is it a complete GGUF model?") from None
