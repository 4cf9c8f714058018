"""Control vectors: build them from SAE decoder rows, write and read them as GGUF files.

The files follow llama.cpp's `--control-vector` loader rules: tensors `direction.N` (N >= 1), F32, 1-D, all the
same length (the model's n_embd). The loader ignores metadata, but tools such as repeng require
`controlvector.model_hint`, so we write the usual keys plus provenance under `esr_local.*`.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .atomic import atomic_path
from .cvec import check_scale
from .errors import FormatError, MissingResourceError, UserInputError, WriteError
from .gguf_check import check_gguf_layout
from .layers import gguf_tensor_name, layer_from_gguf_tensor_name

ARCH = "controlvector"
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class VectorTerm:
    """One latent's contribution: scale x raw decoder row."""

    latent: int
    scale: float
    label: str | None = None
    row_norm: float | None = None


@dataclass
class ControlVector:
    """Directions per llama.cpp layer plus where they came from."""

    directions: dict[int, np.ndarray]
    model_hint: str = ""
    provenance: dict = field(default_factory=dict)

    @property
    def n_embd(self) -> int:
        """Length of every direction."""
        return int(next(iter(self.directions.values())).shape[0]) if self.directions else 0

    def scaled(self, factor: float) -> ControlVector:
        """A copy with every direction multiplied by `factor` (like llama.cpp's --control-vector-scaled)."""
        check_scale(factor)
        return ControlVector({k: v * np.float32(factor) for k, v in self.directions.items()}, self.model_hint, dict(self.provenance))


def from_sae(sae, terms: Sequence[VectorTerm] | Sequence[tuple[int, float]], layer: int, model_hint: str = "") -> ControlVector:
    """Sum of `scale x W_dec[latent]` over the terms, placed at `layer` (no b_dec, no normalisation:
    the paper steers with the raw decoder row)."""
    if not terms:
        raise UserInputError("give at least one --latent to build a vector")
    total = np.zeros(sae.d_model, dtype=np.float64)
    rows = []
    for term in terms:
        t = term if isinstance(term, VectorTerm) else VectorTerm(int(term[0]), float(term[1]))
        scale = check_scale(t.scale)
        if abs(scale) > _F32_MAX:
            raise UserInputError(f"scale {scale:g} does not fit a float32 control vector (|scale| <= 3.4e38); use a smaller --scale")
        row = np.asarray(sae.decoder_row(t.latent), dtype=np.float32)
        if not np.all(np.isfinite(row)):
            bad = int(np.count_nonzero(~np.isfinite(row)))
            raise FormatError(
                f"decoder row of latent {t.latent} in {sae.info.resolved_path} holds {bad} NaN or infinite values, "
                "so it cannot steer; the SAE file is corrupt (download it again) or pick another latent"
            )
        total += scale * row.astype(np.float64)
        rows.append(VectorTerm(t.latent, scale, t.label or sae.label(t.latent), float(np.linalg.norm(row))))
    if not np.all(np.isfinite(total.astype(np.float32))):
        raise UserInputError(
            "the summed steering vector overflows float32 (values beyond ~3.4e38); use smaller --scale values"
        )
    info = sae.info
    prov = {
        "sae_source": info.source,
        "sae_family": info.family,
        "sae_hook": info.hook_name,
        "layer": int(layer),
        "latents": [t.latent for t in rows],
        "scales": [t.scale for t in rows],
        "labels": [t.label or "" for t in rows],
        "row_norms": [t.row_norm for t in rows],
    }
    return ControlVector({int(layer): total.astype(np.float32)}, model_hint, prov)


def write_gguf(cv: ControlVector, path: str | Path) -> Path:
    """Write `cv` as a llama.cpp control-vector GGUF file with provenance metadata (atomically)."""
    if not cv.directions:
        raise UserInputError("the control vector is empty; nothing to write")
    n = {v.shape[0] for v in cv.directions.values()}
    if len(n) != 1:
        raise UserInputError(f"all directions must have the same length, got {sorted(n)}")
    for layer, vec in cv.directions.items():
        if not np.all(np.isfinite(np.asarray(vec, dtype=np.float32))):
            raise UserInputError(f"direction {layer} holds NaN or infinite values; llama.cpp cannot steer with it")
    with atomic_path(path) as tmp:  # the path as given: an empty name is refused, not read as "."
        _write_gguf_file(cv, tmp)
        _verify_written(cv, tmp, path)
    return Path(path).expanduser()


def _verify_written(cv: ControlVector, tmp: Path, path: str | Path) -> None:
    """Read the new file back before it replaces `path`: gguf-py writes tensors with numpy's tofile, which
    ignores a full disk, so a short file would otherwise pass for a good one."""
    try:
        back = read_gguf(tmp)
        same = sorted(back.directions) == sorted(cv.directions) and all(
            np.array_equal(back.directions[k], np.asarray(v, np.float32)) for k, v in cv.directions.items())
    except FormatError:
        same = False
    if not same:
        raise WriteError(f"could not write {path}: the file came out incomplete (is the disk full?); nothing was written there")


def _write_gguf_file(cv: ControlVector, path: Path) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch=ARCH)
    w.add_string(f"{ARCH}.model_hint", cv.model_hint or "unknown")
    w.add_int32(f"{ARCH}.layer_count", len(cv.directions))
    prov = dict(cv.provenance)
    prov.setdefault("created_utc", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    prov.setdefault("esr_local_version", __version__)
    w.add_string("esr_local.provenance_json", json.dumps(prov, sort_keys=True))
    if "latents" in prov:
        w.add_array("esr_local.latents", [int(x) for x in prov["latents"]])
        w.add_array("esr_local.scales", [float(x) for x in prov["scales"]])
    for layer in sorted(cv.directions):
        w.add_tensor(gguf_tensor_name(layer), np.ascontiguousarray(cv.directions[layer], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _field_str(reader, key: str) -> str | None:
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    except Exception:
        return None


def read_gguf(path: str | Path) -> ControlVector:
    """Read a control-vector GGUF, enforcing the rules llama.cpp's loader enforces."""
    import gguf

    path = Path(path).expanduser()
    if path.is_dir():
        raise UserInputError(f"{path} is a folder; give a control-vector .gguf file")
    if not path.is_file():
        raise MissingResourceError(f"vector file not found: {path}")
    check_gguf_layout(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception:  # gguf-py raises ValueError/IndexError/... on truncated or corrupt files
        raise FormatError(f"{path} is truncated or not a GGUF control vector; re-export it with `esr-local vector export`") from None
    directions: dict[int, np.ndarray] = {}
    for t in reader.tensors:
        try:
            layer = layer_from_gguf_tensor_name(t.name)
        except UserInputError as exc:
            raise FormatError(f"{path}: {exc}") from None
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise FormatError(f"{path}: tensor {t.name} is {t.tensor_type.name}, llama.cpp needs F32")
        if int(np.prod(t.shape)) != int(t.shape[0]):  # ggml_n_dims must be 1
            raise FormatError(f"{path}: tensor {t.name} is not 1-D")
        try:
            vec = np.asarray(t.data, dtype=np.float32).reshape(-1).copy()
        except (ValueError, IndexError):
            raise FormatError(f"{path}: tensor {t.name} is truncated; re-export the vector") from None
        if vec.shape[0] != int(t.shape[0]):
            raise FormatError(f"{path}: tensor {t.name} is truncated; re-export the vector")
        if not np.all(np.isfinite(vec)):
            raise FormatError(f"{path}: {t.name} holds NaN or infinite values, so llama.cpp cannot steer with it; "
                              "re-export the vector with finite scales")
        if layer in directions:
            directions[layer] = directions[layer] + vec  # llama.cpp sums repeated indices
        else:
            directions[layer] = vec
    if not directions:
        raise FormatError(f"{path} holds no direction.N tensors; it is not a control vector")
    sizes = {v.shape[0] for v in directions.values()}
    if len(sizes) != 1:
        raise FormatError(f"{path}: direction tensors have different lengths {sorted(sizes)}")
    prov = {}
    raw = _field_str(reader, "esr_local.provenance_json")
    if raw:
        try:
            prov = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            prov = {}
    if not isinstance(prov, dict):
        prov = {}
    arch = _field_str(reader, "general.architecture")
    prov.setdefault("general.architecture", arch)
    return ControlVector(directions, _field_str(reader, f"{ARCH}.model_hint") or "", prov)


def _clean_provenance(prov: dict) -> dict:
    """Provenance with the per-latent lists dropped when they are not lists of the right types (hand-edited files)."""
    out = dict(prov)
    lists = ("latents", "scales", "labels", "row_norms")
    ok = all(isinstance(out.get(k, []), list) for k in lists)
    ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in out.get("latents", []))
    ok = ok and all(isinstance(x, (int, float)) and not isinstance(x, bool) for k in ("scales", "row_norms") for x in out.get(k, []))
    if not ok:
        for k in lists:
            out.pop(k, None)
        out["provenance_note"] = "per-latent provenance was malformed and is not shown"
    return out


def describe(cv: ControlVector, path: str | Path | None = None) -> dict:
    """A JSON-friendly summary (what `esr-local vector inspect` prints)."""
    return {
        "path": str(path) if path else None,
        "model_hint": cv.model_hint,
        "n_embd": cv.n_embd,
        "layers": sorted(cv.directions),
        "norms": {str(k): float(np.linalg.norm(v)) for k, v in sorted(cv.directions.items())},
        "provenance": _clean_provenance(cv.provenance),
    }
