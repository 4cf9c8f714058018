"""Latent labels from a CSV (`index_in_sae,label`) or Neuronpedia explanation exports (`*.jsonl[.gz]`)."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

from ..errors import FormatError, MissingResourceError

_INDEX_COLUMNS = ("index_in_sae", "index", "latent", "feature")
_LABEL_COLUMNS = ("label", "description", "explanation")


def _read_csv(path: Path) -> dict[int, str]:
    try:
        return _read_csv_unchecked(path)
    except (UnicodeDecodeError, csv.Error) as e:
        raise FormatError(f"labels file {path} is not a readable UTF-8 CSV ({e})") from None


def _read_csv_unchecked(path: Path) -> dict[int, str]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        idx_col = next((c for c in _INDEX_COLUMNS if c in cols), None)
        lab_col = next((c for c in _LABEL_COLUMNS if c in cols), None)
        if idx_col is None or lab_col is None:
            raise FormatError(
                f"labels file {path} has columns {cols}; expected an index column ({'/'.join(_INDEX_COLUMNS)}) "
                f"and a label column ({'/'.join(_LABEL_COLUMNS)})"
            )
        out: dict[int, str] = {}
        for lineno, row in enumerate(reader, start=2):
            raw = (row.get(idx_col) or "").strip()
            try:
                idx = int(raw)
            except ValueError:
                raise FormatError(f"labels file {path} line {lineno}: index {raw!r} is not an integer") from None
            label = (row.get(lab_col) or "").strip()
            if label and idx not in out:
                out[idx] = label
        return out


def _read_jsonl(path: Path) -> dict[int, str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    out: dict[int, str] = {}
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                    idx = int(rec["index"])
                except (ValueError, KeyError, TypeError):
                    raise FormatError(
                        f"labels file {path} line {lineno} is not a Neuronpedia explanation record with an 'index'"
                    ) from None
                desc = rec.get("description")
                if isinstance(desc, str) and desc.strip() and idx not in out:
                    out[idx] = desc.strip()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise FormatError(f"labels file {path} could not be read ({e})") from None
    return out


def load_labels(path: str | Path) -> dict[int, str]:
    """Read labels into {latent index: label}.

    Accepts a `.csv` with columns `index_in_sae,label` (Goodfire/ESR style; `index`/`description` also work),
    a Neuronpedia export file `*.jsonl` / `*.jsonl.gz` (fields `index`, `description`), or a folder of such
    export batches. The first non-empty label per index wins.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingResourceError(f"labels file {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz", ".csv")))
        if not files:
            raise MissingResourceError(f"labels folder {path} has no .csv, .jsonl or .jsonl.gz files")
        out: dict[int, str] = {}
        for f in files:
            for k, v in load_labels(f).items():
                out.setdefault(k, v)
        return out
    if path.name.endswith(".csv"):
        return _read_csv(path)
    if path.name.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        return _read_jsonl(path)
    raise FormatError(f"labels file {path}: unknown type; use .csv (index_in_sae,label) or Neuronpedia .jsonl/.jsonl.gz")
