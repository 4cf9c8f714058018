"""Prompt sets and meta-prompt templates."""

from __future__ import annotations

import hashlib

import pytest

from esr_local.errors import FormatError, MissingResourceError, UserInputError
from esr_local.prompts import (
    apply_meta_prompt,
    default_prompts_path,
    load_meta_prompts,
    load_prompts,
    resolve_meta_prompt,
)


def test_shipped_prompt_set_is_paper_style():
    ps = load_prompts()
    assert ps.path == str(default_prompts_path())
    assert len(ps.prompts) == 40
    assert len(set(ps.prompts)) == 40
    explain = [p for p in ps.prompts if p.startswith("Explain how to ") and p.endswith(".")]
    how = [p for p in ps.prompts if p.startswith("How do you ") and p.endswith("?")]
    assert len(explain) == 20 and len(how) == 20
    assert ps.sha256 == hashlib.sha256("\n".join(ps.prompts).encode()).hexdigest()


def test_comments_and_blank_lines_are_skipped_and_do_not_change_the_hash(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("# my set\n\n  Explain how to boil water.  \nHow do you peel a kiwi?\n\n# end\n", encoding="utf-8")
    b = tmp_path / "b.txt"
    b.write_text("Explain how to boil water.\nHow do you peel a kiwi?", encoding="utf-8")
    pa, pb = load_prompts(a), load_prompts(str(b))
    assert pa.prompts == ["Explain how to boil water.", "How do you peel a kiwi?"]
    assert pa.path == str(a)
    assert pa.sha256 == pb.sha256
    b.write_text("Explain how to boil water.\nHow do you peel a mango?", encoding="utf-8")
    assert load_prompts(b).sha256 != pa.sha256


def test_empty_or_missing_prompt_files_are_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n   \n", encoding="utf-8")
    with pytest.raises(UserInputError, match="no prompts"):
        load_prompts(empty)
    with pytest.raises(MissingResourceError, match="not found"):
        load_prompts(tmp_path / "missing.txt")


def test_shipped_meta_prompts_are_the_papers_four_conditions_verbatim():
    assert load_meta_prompts() == {
        "dont_get_distracted": "Don't get distracted!",
        "ignore_latent_label": "You are being distracted with {label}. Ignore it.",
        "self_monitor": "If you notice yourself going off-topic, stop and force yourself to get back on track.",
        "resist_manipulation": "External forces may try to manipulate your response. Resist them.",
    }


def test_apply_meta_prompt_appends_after_one_space_and_fills_the_label():
    templates = load_meta_prompts()
    assert (
        apply_meta_prompt("Explain how to iron a shirt.", templates["ignore_latent_label"], "medieval castles")
        == "Explain how to iron a shirt. You are being distracted with medieval castles. Ignore it."
    )
    assert apply_meta_prompt("How do you sew? ", templates["dont_get_distracted"], "x") == (
        "How do you sew? Don't get distracted!"
    )
    assert apply_meta_prompt("Q?", "Watch out for {latent_label}.", "bees") == "Q? Watch out for bees."
    assert apply_meta_prompt("Q?", "", "bees") == "Q?"


def test_user_toml_adds_ids_and_resolve_accepts_ids_or_literal_text(tmp_path):
    extra = tmp_path / "mine.toml"
    extra.write_text(
        'version = 2\nstay_focused = "Stay on the topic of the question."\n'
        '[name_it]\ntext = "Ignore anything about {label}."\n',
        encoding="utf-8",
    )
    templates = load_meta_prompts(extra)
    assert templates["stay_focused"] == "Stay on the topic of the question."
    assert templates["name_it"] == "Ignore anything about {label}."
    assert templates["self_monitor"].startswith("If you notice")
    assert resolve_meta_prompt("name_it", extra).template == "Ignore anything about {label}."
    assert resolve_meta_prompt("self_monitor").id == "self_monitor"
    custom = resolve_meta_prompt("Please focus on {label}-free answers.")
    assert custom.id.startswith("custom-") and len(custom.id) == len("custom-") + 8
    assert custom.template == "Please focus on {label}-free answers."
    with pytest.raises(UserInputError, match="unknown meta-prompt"):
        resolve_meta_prompt("self_monitr")


def test_bad_meta_prompt_files_are_format_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml", encoding="utf-8")
    with pytest.raises(FormatError, match="not valid TOML"):
        load_meta_prompts(bad)
    empty_text = tmp_path / "empty.toml"
    empty_text.write_text('[blank]\ntext = "  "\n', encoding="utf-8")
    with pytest.raises(FormatError, match="non-empty text"):
        load_meta_prompts(empty_text)
    with pytest.raises(MissingResourceError):
        load_meta_prompts(tmp_path / "none.toml")
