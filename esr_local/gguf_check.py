"""Bounds-check a GGUF file's header before gguf-py parses it.

gguf-py sizes its reads from the counts and lengths written in the file. A corrupt header that claims 2^40
tensors, a 2^50-byte string or a 2^40-element array makes it loop or allocate for a very long time instead
of failing. `check_gguf_layout` walks the header with every count and length checked against the bytes that
are really there, so such a file is refused in microseconds with a FormatError.
"""

from __future__ import annotations

import struct
from pathlib import Path

from .errors import FormatError

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_MAX_HEADER_BYTES = 64 * 2**20  # a control vector's header is a few KB
_MAX_DIMS = 4  # GGML_MAX_DIMS
# bytes per block and elements per block of the tensor types a control vector can hold (F32, F16, BF16, F64)
_TYPE_SIZES = {0: (4, 1), 1: (2, 1), 30: (2, 1), 28: (8, 1)}


class _Corrupt(Exception):
    pass


class _Cursor:
    def __init__(self, data: bytes, size: int):
        self.data, self.pos, self.size = data, 0, size

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Corrupt(f"a field at byte {self.pos} needs {n} bytes but the file has {self.size}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> None:
        self.take(self.u64())


def _value(cur: _Cursor, vtype: int, depth: int = 0) -> None:
    if vtype in _SCALAR_SIZES:
        cur.take(_SCALAR_SIZES[vtype])
    elif vtype == _STRING:
        cur.string()
    elif vtype == _ARRAY and depth == 0:
        item, count = cur.u32(), cur.u64()
        if item in _SCALAR_SIZES:
            cur.take(count * _SCALAR_SIZES[item])
        elif item == _STRING:
            if count * 8 > cur.size:
                raise _Corrupt(f"an array claims {count} strings")
            for _ in range(count):
                cur.string()
        else:
            raise _Corrupt(f"array of unknown type {item}")
    else:
        raise _Corrupt(f"unknown value type {vtype}")


def check_gguf_layout(path: str | Path) -> None:
    """FormatError unless `path` is a GGUF v2/v3 file whose header fields all fit in the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        data = fh.read(min(size, _MAX_HEADER_BYTES))
    if size == 0:
        raise FormatError(f"{path} is empty; give a control vector written by `esr-local vector export`")
    if data[:4] != b"GGUF":
        raise FormatError(f"{path} is not a GGUF file; give a control vector written by `esr-local vector export`")
    if size < 24:
        raise FormatError(f"{path} is truncated ({size} bytes, shorter than a GGUF header); re-export it with "
                          "`esr-local vector export`")
    cur = _Cursor(data, size)
    try:
        cur.take(4)
        version = cur.u32()
        if version not in (2, 3):
            raise FormatError(f"{path}: GGUF version {version} is not supported (2 or 3), or the file is corrupt")
        n_tensors, n_kv = cur.u64(), cur.u64()
        if n_tensors * 24 + n_kv * 13 > size:
            raise FormatError(f"{path}: the GGUF header claims {n_tensors} tensors and {n_kv} keys, more than its "
                              f"{size} bytes can hold; the file is corrupt or truncated")
        alignment = 32
        for _ in range(n_kv):
            key_len = cur.u64()
            key = cur.take(key_len)
            vtype = cur.u32()
            if key == b"general.alignment" and vtype == 4:
                alignment = struct.unpack("<I", cur.data[cur.pos:cur.pos + 4].ljust(4, b"\0"))[0] or 32
            _value(cur, vtype)
        tensors = []
        for _ in range(n_tensors):
            cur.string()
            n_dims = cur.u32()
            if not 1 <= n_dims <= _MAX_DIMS:
                raise _Corrupt(f"a tensor claims {n_dims} dimensions")
            numel = 1
            for _ in range(n_dims):
                numel *= cur.u64()
            ttype, offset = cur.u32(), cur.u64()
            if ttype in _TYPE_SIZES:
                block_bytes, block_elems = _TYPE_SIZES[ttype]
                tensors.append((offset, numel * block_bytes // block_elems))
        data_start = -(-cur.pos // alignment) * alignment
        for offset, nbytes in tensors:
            if data_start + offset + nbytes > size:
                raise _Corrupt(f"tensor data at offset {offset} ({nbytes} bytes) runs past the end of the file")
    except _Corrupt as exc:
        raise FormatError(f"{path} is truncated or corrupt ({exc}); re-export it with `esr-local vector export`") from None
