"""The reference implementation's exact rubric and prompts, fetched at a pinned commit — never shipped.

`--rubric paper` and `--prompts paper` download two files of
`agencyenterprise/endogenous-steering-resistance` at commit `PAPER_COMMIT` once, check their
sha256, and keep them under `<data dir>/paper/<commit>/`; later runs use the cached copies and work
offline. `judge.py` is read with `ast` only: the string constants `SYSTEM_PROMPT` and `INSTRUCTIONS`
are taken from its syntax tree; the file is never executed or imported.

For tests (and mirrors), `ESR_LOCAL_PAPER_BASE_URL` replaces the raw.githubusercontent.com base
and `ESR_LOCAL_PAPER_SHA256` (`judge.py=<hex>,prompts.txt=<hex>`) replaces the pinned hashes. A
rubric read under an overridden hash gets the id `paper-unpinned`, so it can never pass for the
paper's own.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

from .download import DownloadError, fetch_url, sha256_file
from .errors import FormatError, UserInputError
from .paths import data_dir

PAPER_REPO = "agencyenterprise/endogenous-steering-resistance"
PAPER_COMMIT = "3c29a49f9077fa1df58f5e90b5cca7ae8621311c"
BASE_URL_ENV = "ESR_LOCAL_PAPER_BASE_URL"
SHA256_ENV = "ESR_LOCAL_PAPER_SHA256"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/{PAPER_REPO}/{PAPER_COMMIT}"


@dataclass(frozen=True)
class PaperAsset:
    """One file of the reference repository at the pinned commit."""

    path: str
    sha256: str
    what: str  # the option that needs it, for messages


JUDGE_PY = PaperAsset("judge.py", "4d726e5b6bbf4f82075602bfa0ab7a19de8096e3a0f4969cdb36d4a403fe590c", "--rubric paper")
PROMPTS_TXT = PaperAsset("prompts.txt", "a3bcbf82a44046c3fdcb9b65c58b1254ee8976401214533a5a550f0aa00a55d3",
                         "--prompts paper")
PAPER_PROMPT_COUNT = 38


def asset_url(asset: PaperAsset) -> str:
    """Where the asset is downloaded from (the pinned raw URL unless ESR_LOCAL_PAPER_BASE_URL is set)."""
    base = os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL
    return f"{base.rstrip('/')}/{asset.path}"


def cache_path(asset: PaperAsset) -> Path:
    """Where the verified copy is kept."""
    return data_dir() / "paper" / PAPER_COMMIT / asset.path


def expected_sha256(asset: PaperAsset) -> tuple[str, bool]:
    """The hash to check and whether it is the pinned one (False when overridden by ESR_LOCAL_PAPER_SHA256)."""
    spec = os.environ.get(SHA256_ENV, "").strip()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, digest = item.partition("=")
        if not sep or len(digest.strip()) != 64:
            raise UserInputError(f"{SHA256_ENV} must look like judge.py=<64 hex>,prompts.txt=<64 hex>; got {item!r}")
        if name.strip() == asset.path:
            return digest.strip().lower(), digest.strip().lower() == asset.sha256
    return asset.sha256, True


def fetch_asset(asset: PaperAsset, *, progress: bool = True, offline: bool | None = None) -> Path:
    """The verified local copy of `asset`, downloaded on first use. Raises DownloadError (offline and
    not cached, unreachable, tampered) with the URL and where to put the file by hand."""
    sha, _ = expected_sha256(asset)
    try:
        return fetch_url(asset_url(asset), cache_path(asset), sha256=sha, progress=progress, offline=offline)
    except DownloadError as exc:
        raise DownloadError(f"{asset.what} needs the reference {asset.path} (commit {PAPER_COMMIT[:7]}): {exc}") from None


def read_string_constants(source: str, names: tuple[str, ...], *, filename: str = "judge.py") -> dict[str, str]:
    """The values of module-level `NAME = "..."` assignments, read from the syntax tree only.

    A value may be a string literal, implicitly concatenated literals, or literals joined with `+`.
    Raises FormatError when the file does not parse or a name is missing or not a plain string.
    """
    try:
        tree = ast.parse(source, filename=filename)
    except (SyntaxError, ValueError) as exc:
        raise FormatError(f"{filename} does not parse as Python ({exc}); delete the cached copy and fetch again") from None
    found: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id in names:
                found[target.id] = value  # the last assignment wins, as at import time
    out: dict[str, str] = {}
    for name in names:
        if name not in found:
            raise FormatError(f"{filename} has no module-level string {name}")
        text = _literal_string(found[name])
        if text is None:
            raise FormatError(f"{filename}: {name} is not a plain string literal; it cannot be read without running the file")
        out[name] = text
    return out


def _literal_string(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal_string(node.left), _literal_string(node.right)
        return None if left is None or right is None else left + right
    return None


def paper_rubric(*, progress: bool = True, offline: bool | None = None):
    """The paper's rubric: its SYSTEM_PROMPT and INSTRUCTIONS with the paper's three data lines."""
    from .judge.rubric import PAPER_LABEL_LINE, PAPER_PROMPT_LINE, PAPER_RESPONSE_LINE, Rubric

    path = fetch_asset(JUDGE_PY, progress=progress, offline=offline)
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{path} is not UTF-8 text; delete it and fetch again") from None
    consts = read_string_constants(source, ("SYSTEM_PROMPT", "INSTRUCTIONS"))
    _, pinned = expected_sha256(JUDGE_PY)
    return Rubric(
        system=consts["SYSTEM_PROMPT"],
        instructions=consts["INSTRUCTIONS"],
        prompt_line=PAPER_PROMPT_LINE,
        response_line=PAPER_RESPONSE_LINE,
        label_line=PAPER_LABEL_LINE,
        id=f"paper@{PAPER_COMMIT[:7]}" if pinned else "paper-unpinned",
        source=f"{asset_url(JUDGE_PY)} sha256:{sha256_file(path)}",
    )


def paper_prompts_file(*, progress: bool = True, offline: bool | None = None) -> Path:
    """The verified local copy of the paper's prompts.txt (38 prompts at the pinned commit)."""
    return fetch_asset(PROMPTS_TXT, progress=progress, offline=offline)
