"""The files a run reads (model, SAE), fingerprinted at creation and checked on every execution."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ..model_files import file_sha256
from .spec import ModelRef, RunSpec, SaeRef

_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})/")


def fingerprint(path: str | Path) -> dict:
    """{path, size, mtime_ns, sha256} of one file."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(p)}


def unchanged(fp: dict) -> bool:
    """Whether a file still is the one fingerprinted: same size, and the same sha256 unless its mtime is
    exactly the recorded one (a file rewritten in place gets a new mtime, so it is hashed again here,
    bypassing any hash cache)."""
    p = Path(fp["path"])
    if not p.is_file():
        return False
    st = p.stat()
    if st.st_size != fp["size"]:
        return False
    if fp.get("mtime_ns") is not None and st.st_mtime_ns == fp["mtime_ns"]:
        return True
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest() == fp["sha256"]


def sae_files(resolved: str | Path) -> list[dict]:
    """Fingerprints of the SAE file, or of every file in the SAE folder (sorted)."""
    p = Path(resolved)
    paths = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
    return [fingerprint(x) for x in paths]


def hub_revision(resolved: str | Path) -> str | None:
    """The commit of a file in a Hugging Face hub cache (`.../snapshots/<commit>/...`), else None."""
    m = _SNAPSHOT.search(str(Path(resolved).resolve()) + "/")
    return m.group(1) if m else None


def rows_hash(rows: dict[int, np.ndarray]) -> str:
    """sha256 of the float32 decoder rows, in latent order."""
    h = hashlib.sha256()
    for latent in sorted(rows):
        h.update(f"{latent}:".encode())
        h.update(np.ascontiguousarray(rows[latent], dtype=np.float32).tobytes())
    return h.hexdigest()


def check_model(model: ModelRef) -> None:
    """The model file must be the one recorded at creation."""
    path = Path(model.path)
    if not path.is_file():
        raise UserInputError(f"the model file {path} of this run is gone; put it back (sha256 {model.sha256[:12]}...) "
                             "or start a new run")
    if not unchanged({"path": model.path, "size": model.size, "mtime_ns": model.mtime_ns, "sha256": model.sha256}):
        raise UserInputError(f"the model file {path} changed since the run was created (sha256 differs); "
                             "restore the original file or start a new run")


def open_run_sae(spec: RunSpec):
    """The SAE the run was created with, opened from its recorded files, and its decoder rows; a changed
    file (size or sha256) or changed rows is an error."""
    from ..saes import load_sae

    for f in spec.sae.files:
        p = Path(f["path"])
        if not unchanged(f):
            raise UserInputError(f"the SAE file {p} changed since the run was created (size or sha256 differs); "
                                 "restore the original file or start a new run")
    sae = load_sae(spec.sae.resolved_path)
    rows = {latent: np.asarray(sae.decoder_row(latent), np.float32) for latent in spec.latents}
    if rows_hash(rows) != spec.sae.rows_sha256:
        raise UserInputError(f"the decoder rows read from {spec.sae.resolved_path} differ from those at creation; "
                             "start a new run")
    return sae, rows
