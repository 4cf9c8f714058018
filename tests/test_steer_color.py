"""`esr-local steer` colours the steered and unsteered text when asked (or on a terminal), never in JSON
or with --no-color."""

from __future__ import annotations

from click.testing import CliRunner

from esr_local.cli import main

YELLOW, CYAN, RESET = "\x1b[33m", "\x1b[36m", "\x1b[0m"
ARGS = ["steer", "--latent", "1", "--scale", "2", "--max-tokens", "4", "--seed", "3", "--threads", "1", "--compare"]


def test_color_marks_steered_and_unsteered_text():
    r = CliRunner().invoke(main, [*ARGS, "--color"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    start = out.index(YELLOW) + len(YELLOW)
    steered = out[start:out.index(RESET, start)]
    start = out.index(CYAN) + len(CYAN)
    unsteered = out[start:out.index(RESET, start)]
    assert steered.strip() and unsteered.strip()
    assert out.index("=== steered ===") < out.index(YELLOW) < out.index("=== unsteered ===") < out.index(CYAN)
    plain = CliRunner().invoke(main, [*ARGS, "--no-color"]).stdout
    assert "\x1b[" not in plain
    assert steered in plain and unsteered in plain  # same seed, same text, only the colour differs


def test_no_color_by_default_off_a_terminal_and_in_json():
    assert "\x1b[" not in CliRunner().invoke(main, ARGS).stdout  # CliRunner's stdout is not a terminal
    r = CliRunner().invoke(main, [*ARGS, "--color", "--json"])
    assert r.exit_code == 0 and "\x1b[" not in r.stdout
