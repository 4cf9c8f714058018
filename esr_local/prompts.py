"""Prompt sets and meta-prompt templates, loaded from files and versioned by content hash."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, NamedTuple

from .errors import FormatError, MissingResourceError, UserInputError
from .paths import package_data_dir

import tomllib

DEFAULT_PROMPTS_FILE = "prompts.txt"
META_PROMPTS_FILE = "meta_prompts.toml"
#: `load_prompts(PAPER_PROMPTS)` gives the reference implementation's prompt set.
PAPER_PROMPTS = "paper"
#: Placeholders replaced by the steered latent's label (`latent_label` is the paper's name).
LABEL_PLACEHOLDERS = ("{label}", "{latent_label}")


class PromptSet(NamedTuple):
    """Prompts in file order, the file they came from, and the sha256 of the prompts themselves
    (joined with newlines), so editing comments or blank lines does not change the version."""

    prompts: list[str]
    path: str
    sha256: str
    source: str = ""  # "paper@<commit>" for the reference prompts ("paper-unpinned" under another hash), else empty


class MetaPrompt(NamedTuple):
    """A meta-prompt condition: its id and the template appended to each prompt."""

    id: str
    template: str


def default_prompts_path() -> Path:
    """The prompt set shipped with the package."""
    return package_data_dir() / DEFAULT_PROMPTS_FILE


def load_prompts(path: str | Path | None = None) -> PromptSet:
    """Read one prompt per line (blank lines and `#` comment lines skipped; whitespace trimmed).

    `path` None means the shipped set; `"paper"` means the reference implementation's 38 prompts,
    downloaded once at the pinned commit and verified by sha256 (see esr_local.paper_assets), then
    read line by line with only blank lines skipped. Raises MissingResourceError for a missing file
    (or the paper's file offline and not cached) and UserInputError for a file with no prompts.
    """
    if isinstance(path, str) and path.strip() == PAPER_PROMPTS:
        return _load_paper_prompts()
    file = Path(path) if path is not None else default_prompts_path()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingResourceError(f"prompt file not found: {file}") from None
    except OSError as exc:  # a folder, no permission...
        raise UserInputError(f"cannot read prompt file {file}: {exc.strerror}; give a text file, one prompt per line") from None
    except UnicodeDecodeError:
        raise FormatError(f"prompt file {file} is not UTF-8 text") from None
    prompts = [
        line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    if not prompts:
        raise UserInputError(f"prompt file {file} has no prompts; write one prompt per line")
    digest = hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()
    return PromptSet(prompts=prompts, path=str(file), sha256=digest)


def _load_paper_prompts() -> PromptSet:
    from .paper_assets import PAPER_COMMIT, PROMPTS_TXT, expected_sha256, paper_prompts_file

    file = paper_prompts_file()
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{file} is not UTF-8 text; delete it and run again to fetch it anew") from None
    prompts = [line.strip() for line in text.split("\n") if line.strip()]
    if not prompts:
        raise FormatError(f"{file} has no prompts; delete it and run again to fetch it anew")
    digest = hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()
    _, pinned = expected_sha256(PROMPTS_TXT)  # a mirror under an overridden hash never passes for the paper's own
    source = f"paper@{PAPER_COMMIT[:7]}" if pinned else "paper-unpinned"
    return PromptSet(prompts=prompts, path=str(file), sha256=digest, source=source)


def load_meta_prompts(extra: str | Path | None = None) -> dict[str, str]:
    """Meta-prompt templates by id: the shipped four, plus (overriding) those in the TOML `extra`.

    Each id is a table with a `text` string, or a plain `id = "text"` entry.
    """
    templates = _read_meta_file(package_data_dir() / META_PROMPTS_FILE)
    if extra is not None:
        templates.update(_read_meta_file(Path(extra)))
    return templates


def resolve_meta_prompt(spec: str, extra: str | Path | None = None) -> MetaPrompt:
    """Turn a user's choice into a MetaPrompt: a known id, or literal template text.

    Text with a space in it is taken as a template and gets the id `custom-<sha256[:8]>`;
    a single word that is not a known id is an error (probably a typo).
    """
    templates = load_meta_prompts(extra)
    spec = spec.strip()
    if spec in templates:
        return MetaPrompt(spec, templates[spec])
    if " " in spec:
        return MetaPrompt(f"custom-{hashlib.sha256(spec.encode()).hexdigest()[:8]}", spec)
    raise UserInputError(
        f"unknown meta-prompt {spec!r}; use one of {', '.join(sorted(templates))} "
        "or give the sentence to append in quotes"
    )


def apply_meta_prompt(prompt: str, template: str, label: str) -> str:
    """Append `template` to `prompt` after a single space, with `{label}` replaced by `label`."""
    text = template.strip()
    for placeholder in LABEL_PLACEHOLDERS:
        text = text.replace(placeholder, label)
    if not text:
        return prompt
    return f"{prompt.rstrip()} {text}"


def _read_meta_file(path: Path) -> dict[str, str]:
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingResourceError(f"meta-prompt file not found: {path}") from None
    except OSError as exc:
        raise UserInputError(f"cannot read meta-prompt file {path}: {exc.strerror}; give a TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"meta-prompt file {path} is not valid TOML: {exc}") from None
    templates: dict[str, str] = {}
    for key, value in data.items():
        if key == "version" and not isinstance(value, (str, dict)):
            continue
        text = value.get("text") if isinstance(value, dict) else value
        if not isinstance(text, str) or not text.strip():
            raise FormatError(f"meta-prompt {key!r} in {path} needs a non-empty text string")
        templates[key] = text.strip()
    return templates
