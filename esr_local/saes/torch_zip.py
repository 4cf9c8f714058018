"""Read and write `torch.save` zip archives of a flat state_dict, without torch.

Layout of a torch zip (torch >= 1.6), all members stored uncompressed:

    <archive>/data.pkl        pickle of an OrderedDict {name: tensor}; each tensor pickles as
                              torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, ...)
                              and each storage as a persistent id ("storage", torch.FloatStorage, key, "cpu", numel)
    <archive>/byteorder       "little" or "big" (absent in old files: little)
    <archive>/data/<key>      the raw bytes of storage <key>
    <archive>/version         serialization format version

Reading uses a restricted unpickler that resolves only the handful of globals a state_dict needs and
maps them to light stand-ins, so a malicious pickle cannot run code. Tensor data is never loaded:
each tensor becomes a `FileTensor` pointing into the zip file.

The writer produces the same layout (data aligned to 64 bytes like torch, zip64 when needed) and can
stream tensors in chunks or leave them as sparse zero regions, which is how tests and the benchmark
build multi-GB files quickly.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FormatError
from .tensors import FileTensor, zip_member_data_offset

# torch storage class name -> (dtype name, itemsize)
_STORAGE_DTYPES = {
    "FloatStorage": ("float32", 4),
    "DoubleStorage": ("float64", 8),
    "HalfStorage": ("float16", 2),
    "BFloat16Storage": ("bfloat16", 2),
}
_DTYPE_STORAGE = {v[0]: k for k, v in _STORAGE_DTYPES.items()}
_MAX_PICKLE_BYTES = 64 * 2**20  # a state_dict pickle is a few KB; refuse anything absurd before reading it


class _NoState:
    """Refuses pickle's BUILD opcode, which could otherwise overwrite fields after they were validated."""

    def __setstate__(self, state):
        raise FormatError("the pickle tries to modify a tensor record after creating it")


@dataclass(frozen=True)
class _StorageType(_NoState):
    name: str

    @property
    def dtype(self) -> str:
        return _STORAGE_DTYPES[self.name][0]


@dataclass(frozen=True)
class _StorageRef(_NoState):
    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class _TensorRef(_NoState):
    storage: _StorageRef
    storage_offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _as_int_tuple(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in x):
        raise FormatError(f"tensor {what} is {x!r}, expected a tuple of integers")
    return x


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """Stand-in for torch._utils._rebuild_tensor_v2: records where the tensor lives."""
    if not isinstance(storage, _StorageRef):
        raise FormatError("tensor without a storage reference")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise FormatError(f"bad storage offset {storage_offset!r}")
    size, stride = _as_int_tuple(size, "size"), _as_int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise FormatError(f"tensor size {size} and stride {stride} differ in rank")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    """Stand-in for the pre-1.x torch._utils._rebuild_tensor."""
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """Stand-in for torch._utils._rebuild_parameter (nn.Parameter values): the data tensor itself."""
    if not isinstance(data, _TensorRef):
        raise FormatError("parameter without tensor data")
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that knows only state_dict globals; anything else is refused before it is resolved."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise FormatError(
            f"refusing to load: the pickle asks for the global {module}.{name}, which a plain state_dict never "
            "needs (a tampered or non-SAE file?)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise FormatError(f"unexpected persistent id {pid!r} in the pickle")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise FormatError(f"unexpected storage type {storage_type!r}")
        if not isinstance(numel, int) or numel < 0:
            raise FormatError(f"bad storage size {numel!r}")
        return _StorageRef(str(key), storage_type.dtype, numel)


def _unpickle_state_dict(data: bytes, path: Path) -> dict[str, _TensorRef]:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from None
    except Exception as e:  # any malformed pickle: opcodes, truncation, bad calls
        raise FormatError(f"{path}: data.pkl is not a readable state_dict pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or not obj:
        raise FormatError(f"{path}: the pickle holds {type(obj).__name__}, expected a state_dict (name -> tensor)")
    out: dict[str, _TensorRef] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, _TensorRef):
            raise FormatError(f"{path}: state_dict entry {k!r} is not a tensor")
        out[k] = v
    return out


def read_torch_zip(path: str | Path) -> dict[str, FileTensor]:
    """Open a torch zip state_dict and return {name: FileTensor} without reading tensor data.

    Raises FormatError for anything that is not a plain state_dict in the zip layout (legacy
    non-zip torch files, corrupt or truncated archives, compressed storages, unsafe pickles).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            pkls = [n for n in infos if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(pkls) != 1:
                raise FormatError(
                    f"{path} is a zip file but not a torch.save archive (expected one '<name>/data.pkl', found {len(pkls)})"
                )
            prefix = pkls[0][: -len("data.pkl")]
            if infos[pkls[0]].file_size > _MAX_PICKLE_BYTES:
                raise FormatError(f"{path}: data.pkl is {infos[pkls[0]].file_size} bytes, far too large for a state_dict")
            pkl = zf.read(pkls[0])
            byteorder = "little"
            if prefix + "byteorder" in infos:
                byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
    except FormatError:
        raise
    except zipfile.BadZipFile as e:
        raise FormatError(
            f"{path} is not a readable zip/torch archive ({e}). If it is a legacy (pre-1.6) torch file, re-save it with "
            "a recent torch.save; if it was downloaded, it may be truncated: download it again"
        ) from None
    except (OSError, zlib.error, EOFError, NotImplementedError, ValueError) as e:
        raise FormatError(f"{path} could not be read as a zip archive ({e}); download it again") from None
    if byteorder not in ("little", "big"):
        raise FormatError(f"{path}: unknown byteorder {byteorder!r}")

    refs = _unpickle_state_dict(pkl, path)
    out: dict[str, FileTensor] = {}
    for name, ref in refs.items():
        member = f"{prefix}data/{ref.storage.key}"
        info = infos.get(member)
        if info is None:
            raise FormatError(f"{path}: tensor {name!r} points to storage {member!r}, which is missing from the archive")
        itemsize = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}[ref.storage.dtype]
        if ref.storage.numel * itemsize > info.file_size:
            raise FormatError(f"{path}: storage {member!r} is shorter than its declared {ref.storage.numel} elements")
        if ref.size and all(ref.size):
            last = ref.storage_offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
            if last >= ref.storage.numel:
                raise FormatError(f"{path}: tensor {name!r} reaches past the end of its storage")
        base = zip_member_data_offset(path, info)
        out[name] = FileTensor(
            path,
            base + ref.storage_offset * itemsize,
            ref.storage.dtype,
            ref.size,
            ref.stride,
            byteorder="<" if byteorder == "little" else ">",
            what=f"tensor {name!r}",
        )
    return out


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LazyTensor:
    """A tensor to write without holding it in memory.

    `chunks` returns an iterable of arrays whose C-order concatenation is the tensor's data; when it is
    None the tensor is all zeros and is left as a sparse hole in the file (fast, no disk blocks used).
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    chunks: Callable[[], Iterable[np.ndarray]] | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def _pickle_int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _pickle_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def _pickle_tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _state_dict_pickle(entries: list[tuple[str, str, tuple[int, ...], str]]) -> bytes:
    """Protocol-2 pickle of OrderedDict{name: tensor}, opcode for opcode what torch.save emits.

    entries: (name, storage key, shape, dtype). Written by hand because pickling references to
    torch globals through `pickle` would need torch importable.
    """
    out = [b"\x80\x02", b"ccollections\nOrderedDict\n", b")R", b"("]
    for name, key, shape, dtype in entries:
        numel = int(np.prod(shape, dtype=np.int64))
        strides = [int(np.prod(shape[k + 1 :], dtype=np.int64)) for k in range(len(shape))]
        storage = _pickle_tuple(
            [_pickle_str("storage"), f"ctorch\n{_DTYPE_STORAGE[dtype]}\n".encode(), _pickle_str(key), _pickle_str("cpu"), _pickle_int(numel)]
        )
        args = _pickle_tuple(
            [
                storage + b"Q",  # BINPERSID
                _pickle_int(0),
                _pickle_tuple([_pickle_int(s) for s in shape]),
                _pickle_tuple([_pickle_int(s) for s in strides]),
                b"\x89",  # NEWFALSE: requires_grad
                b"ccollections\nOrderedDict\n)R",  # backward_hooks
            ]
        )
        out.append(_pickle_str(name) + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R")
    out.append(b"u.")  # SETITEMS, STOP
    return b"".join(out)


_ZIP64_LIMIT = 0xFFFFFFFF
_ALIGN = 64


class _ZipWriter:
    """Minimal writer of an uncompressed zip with 64-byte aligned member data and zip64 support."""

    def __init__(self, fh, force_zip64: bool = False):
        self.fh = fh
        self.force_zip64 = force_zip64
        self.central: list[tuple[bytes, int, int, int]] = []  # name, crc, size, header offset

    def add(self, name: str, size: int, fill: Callable[[object], int]) -> None:
        """Write one member of `size` bytes; `fill(fh)` writes the data and returns its CRC-32."""
        fh = self.fh
        bname = name.encode("utf-8")
        offset = fh.tell()
        zip64 = self.force_zip64 or size >= _ZIP64_LIMIT
        extra = struct.pack("<HHQQ", 0x0001, 16, size, size) if zip64 else b""
        # Pad with an extra field (id 'FB', as torch does) so the data starts on a 64-byte boundary.
        pad = (-(offset + 30 + len(bname) + len(extra) + 4)) % _ALIGN
        extra += struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        size32 = _ZIP64_LIMIT if zip64 else size
        header = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 45 if zip64 else 20, 0, 0, 0, 0x21, 0, size32, size32, len(bname), len(extra)
        )
        fh.write(header + bname + extra)
        data_start = fh.tell()
        crc = fill(fh)
        end = data_start + size
        if fh.tell() != end:  # a sparse tail: extend the file over the hole
            fh.seek(end - 1)
            fh.write(b"\0")
        fh.seek(offset + 14)
        fh.write(struct.pack("<I", crc))
        fh.seek(end)
        self.central.append((bname, crc, size, offset))

    def close(self) -> None:
        fh = self.fh
        cd_start = fh.tell()
        for bname, crc, size, offset in self.central:
            fields = []
            if self.force_zip64 or size >= _ZIP64_LIMIT:
                fields += [size, size]
            if self.force_zip64 or offset >= _ZIP64_LIMIT:
                fields.append(offset)
            extra = struct.pack("<HH", 0x0001, 8 * len(fields)) + struct.pack(f"<{len(fields)}Q", *fields) if fields else b""
            size32 = _ZIP64_LIMIT if (self.force_zip64 or size >= _ZIP64_LIMIT) else size
            off32 = _ZIP64_LIMIT if (self.force_zip64 or offset >= _ZIP64_LIMIT) else offset
            fh.write(
                struct.pack(
                    "<IHHHHHHIIIHHHHHII",
                    0x02014B50, 45 if fields else 20, 45 if fields else 20, 0, 0, 0, 0x21, crc, size32, size32,
                    len(bname), len(extra), 0, 0, 0, 0, off32,
                )
                + bname
                + extra
            )
        cd_end = fh.tell()
        n, cd_size = len(self.central), cd_end - cd_start
        if self.force_zip64 or cd_start >= _ZIP64_LIMIT or n >= 0xFFFF:
            fh.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, cd_size, cd_start))
            fh.write(struct.pack("<IIQI", 0x07064B50, 0, cd_end, 1))
            fh.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, _ZIP64_LIMIT, _ZIP64_LIMIT, 0))
        else:
            fh.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, cd_size, cd_start, 0))


def _write_bytes(data: bytes) -> Callable[[object], int]:
    def fill(fh) -> int:
        fh.write(data)
        return zlib.crc32(data)

    return fill


def _write_lazy(t: LazyTensor) -> Callable[[object], int]:
    def fill(fh) -> int:
        crc = 0
        if t.chunks is None:  # zeros: CRC over zeros, leave a hole
            zero = bytes(1 << 20)
            left = t.nbytes
            while left:
                n = min(left, len(zero))
                crc = zlib.crc32(zero[:n] if n < len(zero) else zero, crc)
                left -= n
            fh.seek(t.nbytes, os.SEEK_CUR)
            return crc
        written = 0
        for chunk in t.chunks():
            b = np.ascontiguousarray(chunk, dtype=np.dtype(t.dtype).newbyteorder("<")).tobytes()
            fh.write(b)
            crc = zlib.crc32(b, crc)
            written += len(b)
        if written != t.nbytes:
            raise ValueError(f"chunks produced {written} bytes, expected {t.nbytes}")
        return crc

    return fill


def write_state_dict(
    path: str | Path,
    tensors: Mapping[str, np.ndarray | LazyTensor],
    *,
    archive_name: str | None = None,
    force_zip64: bool = False,
) -> Path:
    """Write `tensors` as a torch.save-compatible zip (what `torch.save(OrderedDict(...), path)` makes).

    Arrays must be float32/float16/float64; `LazyTensor`s are streamed or left sparse.
    `force_zip64` writes zip64 records even for small files (to exercise readers).
    """
    path = Path(path)
    prefix = (archive_name or path.stem) + "/"
    entries, fills = [], []
    for i, (name, t) in enumerate(tensors.items()):
        if isinstance(t, LazyTensor):
            dtype, shape, size, fill = t.dtype, tuple(t.shape), t.nbytes, _write_lazy(t)
        else:
            a = np.ascontiguousarray(t)
            dtype, shape = str(a.dtype), tuple(a.shape)
            if dtype not in _DTYPE_STORAGE:
                raise ValueError(f"cannot write {name}: dtype {dtype}")
            data = a.astype(a.dtype.newbyteorder("<")).tobytes()
            size, fill = len(data), _write_bytes(data)
        if dtype not in _DTYPE_STORAGE:
            raise ValueError(f"cannot write {name}: dtype {dtype}")
        entries.append((name, str(i), shape, dtype))
        fills.append((f"{prefix}data/{i}", size, fill))
    pkl = _state_dict_pickle(entries)
    with open(path, "wb") as fh:
        zw = _ZipWriter(fh, force_zip64=force_zip64)
        zw.add(prefix + "data.pkl", len(pkl), _write_bytes(pkl))
        zw.add(prefix + "byteorder", 6, _write_bytes(b"little"))
        for member, size, fill in fills:
            zw.add(member, size, fill)
        zw.add(prefix + "version", 2, _write_bytes(b"3\n"))
        zw.close()
    return path
