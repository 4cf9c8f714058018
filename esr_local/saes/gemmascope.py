"""GemmaScope (Gemma 2) SAEs: `params.npz` with W_enc/W_dec/b_enc/b_dec/threshold, JumpReLU."""

from __future__ import annotations

import math
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from ..errors import FormatError
from .base import LinearSae, SaeInfo, check_shapes, decoder_dims, layer_or_none
from .tensors import FileTensor, MemoryTensor, Tensor, zip_member_data_offset

_REPO = re.compile(r"gemma-scope-(?P<size>\d+b)-(?P<variant>pt|it)-(?P<site>res|mlp|att|transcoders)")
_LAYER = re.compile(r"(?:^|/)layer_(?P<layer>\d+)/width_[^/]+/")
_NUMPY_NAMES = {"float32": "float32", "float16": "float16", "float64": "float64"}


class GemmaScopeSae(LinearSae):
    """GemmaScope layout: W_enc [d_model, d_sae], W_dec [d_sae, d_model]; acts = relu(pre) * (pre > threshold)."""

    def _activate(self, pre: np.ndarray, indices: np.ndarray) -> np.ndarray:
        # pre = x @ W_enc + b_enc on the raw residual (b_dec is not subtracted), then JumpReLU.
        return self._jumprelu(pre, indices)


class _CompressedNpyTensor(Tensor):
    """A deflated .npy member: inflated (once, on first use) into memory."""

    def __init__(self, path: Path, member: str, shape: tuple[int, ...], dtype: str):
        self._path, self._member = path, member
        self.shape, self.dtype = shape, dtype
        self._mem: MemoryTensor | None = None

    def _load(self) -> MemoryTensor:
        if self._mem is None:
            try:
                with zipfile.ZipFile(self._path) as zf, zf.open(self._member) as fh:
                    self._mem = MemoryTensor(npy_format.read_array(fh, allow_pickle=False), self.dtype)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error, NotImplementedError) as e:
                raise FormatError(f"{self._path}: member {self._member} could not be inflated ({e})") from None
        return self._mem

    def read(self):
        return self._load().read()

    def row(self, i):
        return self._load().row(i)

    def col(self, j):
        return self._load().col(j)

    def take(self, indices):
        return self._load().take(indices)

    def row_block(self, start, stop):
        return self._load().row_block(start, stop)

    def col_block(self, start, stop):
        return self._load().col_block(start, stop)


def _read_npy_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = npy_format.read_magic(fh)
        if version == (1, 0):
            return npy_format.read_array_header_1_0(fh)
        if version == (2, 0):
            return npy_format.read_array_header_2_0(fh)
        return npy_format._read_array_header(fh, version)  # (3, 0): same as 2.0 with a UTF-8 header
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile):
        raise
    except Exception as e:  # numpy parses the header text as a Python literal: SyntaxError, TokenError, ...
        raise ValueError(f"unreadable .npy header ({type(e).__name__})") from None


def _dtype_name(dt: np.dtype, where: str) -> tuple[str, str]:
    name = _NUMPY_NAMES.get(dt.newbyteorder("=").name)
    if name is None:
        raise FormatError(f"{where} has dtype {dt}; esr-local reads float16/32/64 arrays")
    return name, (">" if dt.byteorder == ">" else "<")


def read_npz(path: Path) -> dict[str, Tensor]:
    """Lazy views of the arrays in an .npz: uncompressed members are read in place, compressed ones on demand."""
    out: dict[str, Tensor] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[: -len(".npy")]
                where = f"{path}: array {name!r}"
                if info.compress_type == zipfile.ZIP_STORED:
                    start = zip_member_data_offset(path, info)
                    with open(path, "rb") as fh:
                        fh.seek(start)
                        shape, fortran, dt = _read_npy_header(fh)
                        data_start = fh.tell()
                    dtype, order = _dtype_name(dt, where)
                    strides = None
                    if fortran:
                        strides = [math.prod(shape[:k]) for k in range(len(shape))]
                    out[name] = FileTensor(path, data_start, dtype, shape, strides, byteorder=order, what=where)
                else:
                    with zf.open(info) as fh:
                        shape, _fortran, dt = _read_npy_header(fh)
                    dtype, _ = _dtype_name(dt, where)
                    if math.prod(shape) * dt.itemsize > info.file_size:  # never inflate more than the member holds
                        raise FormatError(f"{where} claims shape {list(shape)}, more data than its {info.file_size} "
                                          "bytes hold; the file is corrupt: download it again")
                    out[name] = _CompressedNpyTensor(path, info.filename, tuple(shape), dtype)
    except FormatError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error, NotImplementedError) as e:
        raise FormatError(f"{path} is not a readable .npz archive ({e}); download it again") from None
    return out


def _describe_path(text: str) -> tuple[str | None, str | None]:
    """(hook, model) guessed from a GemmaScope repo path such as
    `models--google--gemma-scope-2b-pt-res/.../layer_16/width_16k/average_l0_78/params.npz`."""
    m = _LAYER.search(text)
    repo = _REPO.search(text)
    model = None
    if repo:
        model = f"google/gemma-2-{repo.group('size')}" + ("-it" if repo.group("variant") == "it" else "")
    if m is None:
        return None, model
    layer = int(m.group("layer"))
    site = repo.group("site") if repo else "res"  # a bare layer_N/width_... path: the residual release
    hook = {
        "res": f"blocks.{layer}.hook_resid_post",
        "mlp": f"blocks.{layer}.hook_mlp_out",
        "att": f"blocks.{layer}.attn.hook_z",
    }.get(site)
    return hook, model


def open_gemmascope(path: Path, *, source: str, labels: Path | None) -> GemmaScopeSae:
    """Open a GemmaScope `params.npz`."""
    arrays = read_npz(path)
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if k not in arrays]
    if missing:
        raise FormatError(
            f"{path} is not a GemmaScope params.npz: missing {', '.join(missing)} (found: {', '.join(sorted(arrays)) or 'nothing'})"
        )
    w_dec, w_enc = arrays["W_dec"], arrays["W_enc"]
    d_sae, d_model = decoder_dims(str(path), w_dec)
    check_shapes(str(path), {name: (arrays[name], shape) for name, shape in
                             (("W_enc", (d_model, d_sae)), ("b_enc", (d_sae,)), ("b_dec", (d_model,)), ("threshold", (d_sae,)))})
    hook, model = _describe_path(f"{source}/{path.as_posix()}")
    info = SaeInfo(
        family="gemmascope",
        source=source,
        resolved_path=str(path),
        d_model=d_model,
        d_sae=d_sae,
        activation="jumprelu",
        hook_name=hook,
        layer=layer_or_none(hook),
        model_name=model,
        dtype=w_dec.dtype,
    )
    return GemmaScopeSae(
        info,
        w_dec=w_dec,
        dec_by_rows=True,
        w_enc=w_enc,
        enc_by_cols=True,
        b_enc=arrays["b_enc"],
        b_dec=arrays["b_dec"],
        threshold=arrays["threshold"],
        labels_path=labels,
    )
