"""Neuronpedia explanation exports: download once into a local cache, then read offline.

Neuronpedia publishes the explanations of each SAE ("source") as gzipped JSON-lines batches:

    <base>/v1/<model>/<source>/explanations/batch-0.jsonl.gz, batch-1.jsonl.gz, ...

each line an object with at least `index` and `description`. A Neuronpedia id is `<model>/<source>`
(e.g. `gemma-2-2b/16-gemmascope-res-16k`). Batches are fetched in order until the server answers
404/403 for the next one; a `complete.json` marker then records how many there were, so later reads
(offline included) know the cache is whole. The base URL can be changed with ESR_LOCAL_NEURONPEDIA_URL
(a mirror, or a local server in tests).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from ..errors import MissingResourceError, UserInputError
from ..paths import data_dir

DEFAULT_BASE_URL = "https://neuronpedia-datasets.s3.us-east-1.amazonaws.com"
BASE_URL_ENV = "ESR_LOCAL_NEURONPEDIA_URL"
MARKER = "complete.json"
MAX_BATCHES = 100_000  # a guard against a server that never says 404
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_id(neuronpedia_id: str) -> tuple[str, str]:
    """(model, source) of a Neuronpedia id `model/source`; UserInputError for anything else."""
    if not isinstance(neuronpedia_id, str) or not _ID.match(neuronpedia_id.strip()):
        raise UserInputError(
            f"bad Neuronpedia id {neuronpedia_id!r}: expected MODEL/SOURCE, e.g. gemma-2-2b/16-gemmascope-res-16k"
        )
    model, source = neuronpedia_id.strip().split("/")
    return model, source


def base_url() -> str:
    """Where exports are downloaded from (ESR_LOCAL_NEURONPEDIA_URL, else Neuronpedia's public bucket)."""
    return (os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def cache_folder(neuronpedia_id: str) -> Path:
    """`<data dir>/labels/neuronpedia/<model>/<source>`."""
    model, source = check_id(neuronpedia_id)
    return data_dir() / "labels" / "neuronpedia" / model / source


def batch_url(neuronpedia_id: str, i: int) -> str:
    model, source = check_id(neuronpedia_id)
    return f"{base_url()}/v1/{model}/{source}/explanations/batch-{i}.jsonl.gz"


def is_complete(folder: Path) -> bool:
    """True when a finished download left its marker and every batch it names is present."""
    try:
        info = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        n = int(info["batches"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return n > 0 and all((folder / f"batch-{i}.jsonl.gz").is_file() for i in range(n))


def _is_absent(exc: Exception) -> bool:
    text = str(exc)
    return "HTTP 404" in text or "HTTP 403" in text  # S3 answers 403 for a missing key without list rights


def download_explanations(neuronpedia_id: str, *, progress: bool = True, offline: bool | None = None) -> Path:
    """Make sure the explanation batches of `neuronpedia_id` are cached; return the cache folder.

    A complete cache is used without touching the network. Offline (ESR_LOCAL_OFFLINE=1 /
    HF_HUB_OFFLINE=1) without a complete cache raises MissingResourceError naming the URL to fetch.
    """
    from ..download import fetch_url, is_offline

    folder = cache_folder(neuronpedia_id)
    if is_complete(folder):
        return folder
    if is_offline(offline):
        raise MissingResourceError(
            f"the Neuronpedia labels of {neuronpedia_id} are not cached in {folder} and esr-local is offline; "
            f"connect and run `esr-local latents show 0` once, or place {batch_url(neuronpedia_id, 0)} "
            "(and the following batches) in that folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    while n < MAX_BATCHES:
        dest = folder / f"batch-{n}.jsonl.gz"
        if progress:
            print(f"Neuronpedia labels {neuronpedia_id}: batch {n}", file=sys.stderr)
        try:
            fetch_url(batch_url(neuronpedia_id, n), dest, progress=progress, offline=False)
        except MissingResourceError as exc:
            if n > 0 and _is_absent(exc):
                break
            if _is_absent(exc):
                raise MissingResourceError(
                    f"Neuronpedia has no explanation export for {neuronpedia_id} ({batch_url(neuronpedia_id, 0)} "
                    "was not found); check the id, or pass a labels file with --labels"
                ) from None
            raise
        n += 1
    (folder / MARKER).write_text(json.dumps({"batches": n, "base_url": base_url(), "id": neuronpedia_id}) + "\n",
                                 encoding="utf-8")
    return folder
