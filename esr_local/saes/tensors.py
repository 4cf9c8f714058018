"""On-disk tensor views: read single rows, columns or elements of a 2-D/1-D array without loading it.

Every SAE format ends up as a handful of named arrays. A `Tensor` gives the few access patterns the
loaders need (`row`, `col`, `take`, `read`) and always returns float32. Three implementations:

- `FileTensor`: an array at a byte offset inside a file, with explicit element strides (torch zip
  storages, uncompressed `.npy` members of an `.npz`, bf16 safetensors). Reads go through `os.pread`
  on only the bytes needed, so a column of a 2 GB row-major matrix costs a few thousand small reads,
  not a full load, and the process never maps the file (peak RSS stays flat).
- `MemoryTensor`: an array already in memory (compressed `.npz` members, which must be inflated).
- `SafetensorsTensor`: a tensor in a `.safetensors` file, sliced through `safetensors.safe_open`.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import FormatError
from .validate import int_list

# Reads whose gap to the next wanted element is below this are merged into one pread.
_MERGE_GAP_BYTES = 64 * 1024

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64}


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) to float32: bf16 is the top half of an IEEE float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


class Tensor:
    """A read-only 1-D or 2-D array. All reads return new float32 numpy arrays."""

    shape: tuple[int, ...]
    dtype: str  # "float32" | "float16" | "float64" | "bfloat16"

    def read(self) -> np.ndarray:
        """The whole array (use only for small arrays such as biases)."""
        raise NotImplementedError

    def row(self, i: int) -> np.ndarray:
        """`a[i, :]` of a 2-D array."""
        raise NotImplementedError

    def col(self, j: int) -> np.ndarray:
        """`a[:, j]` of a 2-D array."""
        raise NotImplementedError

    def take(self, indices: Sequence[int]) -> np.ndarray:
        """`a[indices]` of a 1-D array."""
        raise NotImplementedError

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        """`a[indices, :]` of a 2-D array, shape [len(indices), shape[1]]."""
        return np.stack([self.row(i) for i in indices]) if len(indices) else np.zeros((0, self.shape[1]), np.float32)

    def cols(self, indices: Sequence[int]) -> np.ndarray:
        """`a[:, indices]` of a 2-D array, shape [shape[0], len(indices)]."""
        if not len(indices):
            return np.zeros((self.shape[0], 0), np.float32)
        return np.stack([self.col(j) for j in indices], axis=1)

    def row_block(self, start: int, stop: int) -> np.ndarray:
        """`a[start:stop, :]` of a 2-D array (a contiguous block of rows), float32."""
        return self.rows(range(start, stop))

    def col_block(self, start: int, stop: int) -> np.ndarray:
        """`a[:, start:stop]` of a 2-D array (a contiguous block of columns), float32."""
        return self.cols(range(start, stop))


class MemoryTensor(Tensor):
    """An array held in memory."""

    def __init__(self, array: np.ndarray, dtype: str | None = None):
        self._a = array
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = dtype or str(array.dtype)

    def read(self) -> np.ndarray:
        return np.array(self._a, dtype=np.float32)

    def row(self, i: int) -> np.ndarray:
        return np.array(self._a[i, :], dtype=np.float32)

    def col(self, j: int) -> np.ndarray:
        return np.array(self._a[:, j], dtype=np.float32)

    def take(self, indices: Sequence[int]) -> np.ndarray:
        return np.array(self._a[np.asarray(indices, dtype=np.int64)], dtype=np.float32)

    def row_block(self, start: int, stop: int) -> np.ndarray:
        return np.array(self._a[start:stop, :], dtype=np.float32)

    def col_block(self, start: int, stop: int) -> np.ndarray:
        return np.array(self._a[:, start:stop], dtype=np.float32)


class FileTensor(Tensor):
    """An array stored in `path` starting at byte `offset`, with element strides (like torch/numpy views).

    `byteorder` is "<" or ">". Construction checks that every element lies inside the file.
    """

    def __init__(
        self,
        path: str | Path,
        offset: int,
        dtype: str,
        shape: Sequence[int],
        strides: Sequence[int] | None = None,
        byteorder: str = "<",
        what: str = "tensor",
    ):
        if dtype not in (*_NUMPY_DTYPES, "bfloat16"):
            raise FormatError(f"{what} in {path} has dtype {dtype}, which esr-local cannot read (float16/32/64, bfloat16)")
        self.path = str(path)
        self.offset = int(offset)
        self.dtype = dtype
        self.shape = tuple(int(s) for s in shape)
        if strides is None:  # C order
            strides = [math.prod(self.shape[k + 1 :]) for k in range(len(self.shape))]
        self.strides = tuple(int(s) for s in strides)
        if dtype == "bfloat16":
            self._np = np.dtype(byteorder + "u2")
        else:
            self._np = np.dtype(_NUMPY_DTYPES[dtype]).newbyteorder(byteorder)
        self.itemsize = self._np.itemsize
        if any(s < 0 for s in self.shape) or any(s < 0 for s in self.strides):
            raise FormatError(f"{what} in {self.path} has a negative size or stride {self.shape}/{self.strides}")
        last = sum((n - 1) * s for n, s in zip(self.shape, self.strides)) if all(self.shape) else -1
        end = self.offset + (last + 1) * self.itemsize
        size = os.path.getsize(self.path)
        if end > size:
            raise FormatError(
                f"{what} in {self.path} needs bytes up to {end} but the file has {size}: the file is truncated or corrupt; "
                "download it again"
            )

    def _gather(self, elem_offsets: np.ndarray) -> np.ndarray:
        """Read the elements at the given element offsets (relative to `offset`), in the given order."""
        elem_offsets = np.asarray(elem_offsets, dtype=np.int64)
        out = np.empty(elem_offsets.shape[0], dtype=self._np)
        if out.size == 0:
            return self._to_f32(out)
        order = np.argsort(elem_offsets, kind="stable")
        byte_pos = self.offset + elem_offsets[order] * self.itemsize
        # Split into runs whose consecutive elements are close enough to read in one go.
        breaks = np.nonzero(np.diff(byte_pos) > _MERGE_GAP_BYTES)[0] + 1
        starts = np.concatenate(([0], breaks))
        stops = np.concatenate((breaks, [len(byte_pos)]))
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for a, b in zip(starts.tolist(), stops.tolist()):
                first = int(byte_pos[a])
                length = int(byte_pos[b - 1]) - first + self.itemsize
                buf = os.pread(fd, length, first)
                if len(buf) != length:
                    raise FormatError(f"short read in {self.path} at byte {first}: the file is truncated; download it again")
                chunk = np.frombuffer(buf, dtype=self._np)
                out[order[a:b]] = chunk[(byte_pos[a:b] - first) // self.itemsize]
        finally:
            os.close(fd)
        return self._to_f32(out)

    def _to_f32(self, raw: np.ndarray) -> np.ndarray:
        if self.dtype == "bfloat16":
            return _bf16_to_f32(raw.astype(np.uint16))
        return raw.astype(np.float32)

    def read(self) -> np.ndarray:
        # No index array as large as the tensor: 1-D and 0-D arrays go through one gather of their
        # (few) elements, 2-D arrays are read one block of rows at a time.
        if len(self.shape) == 2:
            return self.row_block(0, self.shape[0])
        if len(self.shape) == 0:
            return self._gather(np.zeros(1, np.int64)).reshape(())
        if len(self.shape) == 1:
            return self._gather(np.arange(self.shape[0], dtype=np.int64) * self.strides[0])
        idx = np.indices(self.shape).reshape(len(self.shape), -1)  # >2-D: rare, small
        offs = (idx * np.array(self.strides, dtype=np.int64)[:, None]).sum(axis=0)
        return self._gather(offs).reshape(self.shape)

    def _span(self, first_elem: int, n_elems: int, fd: int) -> np.ndarray:
        """`n_elems` consecutive stored elements starting at element `first_elem` (one pread)."""
        start = self.offset + first_elem * self.itemsize
        length = n_elems * self.itemsize
        buf = os.pread(fd, length, start)
        if len(buf) != length:
            raise FormatError(f"short read in {self.path} at byte {start}: the file is truncated; download it again")
        return np.frombuffer(buf, dtype=self._np)

    def _block(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """`a[r0:r1, c0:c1]` of a 2-D array, reading only spans of stored elements that hold it.

        Whichever axis has unit stride is read in runs (one pread per run); a block with no unit-stride
        axis falls back to the element gather, one row at a time.
        """
        rows, cols = r1 - r0, c1 - c0
        out = np.empty((rows, cols), dtype=np.float32)
        if rows <= 0 or cols <= 0:
            return out
        s0, s1 = self.strides
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if s1 == 1 and s0 == self.shape[1] and cols == self.shape[1]:
                # Whole rows of a C-contiguous array: one run, read in pieces of at most ~64 MB.
                per = max(1, (64 << 20) // max(1, cols * self.itemsize))
                for a in range(r0, r1, per):
                    b = min(r1, a + per)
                    out[a - r0 : b - r0] = self._to_f32(self._span(a * s0, (b - a) * cols, fd).reshape(b - a, cols))
            elif s1 == 1:
                for i in range(rows):
                    out[i] = self._to_f32(self._span((r0 + i) * s0 + c0, cols, fd))
            elif s0 == 1:
                for j in range(cols):
                    out[:, j] = self._to_f32(self._span((c0 + j) * s1 + r0, rows, fd))
            else:
                for i in range(rows):
                    out[i] = self._gather((r0 + i) * s0 + (c0 + np.arange(cols, dtype=np.int64)) * s1)
        finally:
            os.close(fd)
        return out

    def row_block(self, start: int, stop: int) -> np.ndarray:
        return self._block(start, stop, 0, self.shape[1])

    def col_block(self, start: int, stop: int) -> np.ndarray:
        return self._block(0, self.shape[0], start, stop)

    def row(self, i: int) -> np.ndarray:
        return self._gather(i * self.strides[0] + np.arange(self.shape[1], dtype=np.int64) * self.strides[1])

    def col(self, j: int) -> np.ndarray:
        return self._gather(j * self.strides[1] + np.arange(self.shape[0], dtype=np.int64) * self.strides[0])

    def take(self, indices: Sequence[int]) -> np.ndarray:
        return self._gather(np.asarray(indices, dtype=np.int64) * self.strides[0])


class SafetensorsTensor(Tensor):
    """One tensor of a `.safetensors` file, read through `safe_open(...).get_slice`."""

    def __init__(self, path: str | Path, name: str, dtype: str, shape: Sequence[int]):
        self.path = str(path)
        self.name = name
        self.dtype = dtype
        self.shape = tuple(int(s) for s in shape)

    def _with_slice(self, fn):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(self.path, framework="numpy") as f:
                return fn(f.get_slice(self.name))
        except (SafetensorError, OSError) as e:  # a file changed or corrupted after it was opened
            raise FormatError(f"{self.path}: tensor {self.name!r} could not be read ({e}); download the file again") from None

    def read(self) -> np.ndarray:
        return self._with_slice(lambda s: np.array(s[:], dtype=np.float32))

    def row(self, i: int) -> np.ndarray:
        return self._with_slice(lambda s: np.array(s[i], dtype=np.float32))

    def col(self, j: int) -> np.ndarray:
        return self._with_slice(lambda s: np.array(s[:, j], dtype=np.float32))

    def take(self, indices: Sequence[int]) -> np.ndarray:
        return self._with_slice(lambda s: np.array([s[int(i)] for i in indices], dtype=np.float32).reshape(-1))

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        if not len(indices):
            return np.zeros((0, self.shape[1]), np.float32)
        return self._with_slice(lambda s: np.stack([np.asarray(s[int(i)], np.float32) for i in indices]))

    def cols(self, indices: Sequence[int]) -> np.ndarray:
        if not len(indices):
            return np.zeros((self.shape[0], 0), np.float32)
        return self._with_slice(lambda s: np.stack([np.asarray(s[:, int(j)], np.float32) for j in indices], axis=1))

    def row_block(self, start: int, stop: int) -> np.ndarray:
        return self._with_slice(lambda s: np.array(s[start:stop], dtype=np.float32).reshape(-1, self.shape[1]))

    def col_block(self, start: int, stop: int) -> np.ndarray:
        return self._with_slice(lambda s: np.array(s[:, start:stop], dtype=np.float32).reshape(self.shape[0], -1))


_ST_DTYPES = {"F32": "float32", "F16": "float16", "F64": "float64", "BF16": "bfloat16"}


def open_safetensors(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a `.safetensors` file as lazy views (nothing but the header is read)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise ValueError("file shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > min(100 * 1024 * 1024, size - 8):  # never allocate more than the file holds
                raise ValueError(f"header length {n} does not fit in the file's {size} bytes")
            import json

            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise FormatError(f"{path} is not a readable safetensors file ({e}); download it again") from None
    data_start = 8 + n
    out: dict[str, Tensor] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            st_dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{path}: safetensors header entry {name!r} is malformed") from None
        where = f"{path}: tensor {name!r}"
        shape = int_list(shape, where, "shape")
        begin, end = int_list(offsets, where, "data_offsets", length=2)
        if begin > end or data_start + end > size:
            raise FormatError(f"{where} claims bytes {begin} to {end} of a {size - data_start}-byte data section; "
                              "the file is corrupt or truncated: download it again")
        if not isinstance(st_dtype, str):
            raise FormatError(f"{where}: dtype must be a string, got {st_dtype!r}")
        dtype = _ST_DTYPES.get(st_dtype)
        if dtype is None:
            raise FormatError(f"{path}: tensor {name!r} has dtype {st_dtype}; esr-local reads F32, F16, F64 and BF16")
        itemsize = 2 if dtype == "bfloat16" else np.dtype(_NUMPY_DTYPES[dtype]).itemsize
        if math.prod(shape) * itemsize != end - begin:  # exact integers: no int64 overflow on huge shapes
            raise FormatError(f"{path}: tensor {name!r} does not fit its declared byte range; the file is corrupt")
        if dtype == "bfloat16":  # numpy has no bfloat16, so safetensors' numpy backend cannot slice it
            out[name] = FileTensor(path, data_start + begin, dtype, shape, what=f"tensor {name!r}")
        else:
            out[name] = SafetensorsTensor(path, name, dtype, shape)
    if any(isinstance(t, SafetensorsTensor) for t in out.values()):
        _check_with_safetensors(path)
    return out


def _check_with_safetensors(path: Path) -> None:
    """Let the safetensors library validate the header too (it also refuses gaps between tensors)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except (SafetensorError, OSError) as e:
        raise FormatError(f"{path} is not a readable safetensors file ({e}); download it again") from None


def zip_member_data_offset(path: str | Path, info: zipfile.ZipInfo) -> int:
    """Absolute file offset of the first data byte of an uncompressed zip member.

    The central directory gives the local header's offset; the data follows the 30-byte local header,
    the file name and the local extra field (whose length may differ from the central one).
    """
    if info.compress_type != zipfile.ZIP_STORED:
        raise FormatError(f"{path}: zip member {info.filename} is compressed, so it cannot be read in place")
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        hdr = fh.read(30)
    if len(hdr) != 30 or hdr[:4] != b"PK\x03\x04":
        raise FormatError(f"{path}: bad local header for zip member {info.filename}; the file is corrupt")
    name_len, extra_len = struct.unpack("<HH", hdr[26:30])
    return info.header_offset + 30 + name_len + extra_len
