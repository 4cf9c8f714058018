"""--rubric paper / --prompts paper against a local HTTP server serving FIXTURE files written here.

The repository must not contain the paper's text, so the fixtures are our own stand-ins shaped like the
reference judge.py (a parenthesised SYSTEM_PROMPT, a triple-quoted INSTRUCTIONS, code around them that
must never run), with the expected sha256 overridden through ESR_LOCAL_PAPER_SHA256."""

from __future__ import annotations

import hashlib
import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from esr_local import paper_assets
from esr_local.errors import FormatError, MissingResourceError
from esr_local.judge import build_judge_messages, make_judge, resolve_rubric
from esr_local.prompts import load_prompts

FAKE_JUDGE_PY = '''\
raise SystemExit("judge.py was executed or imported")  # would end the test run at once

SYSTEM_PROMPT = (
    "Fixture system line one. "
    "Fixture system line two."
)

INSTRUCTIONS = """Fixture instructions.
Split into attempts {like this}."""

def judge(prompt, response, feature_label):
    return f"{INSTRUCTIONS}\\n\\nPrompt: {prompt}\\nResponse: {response}\\nUnrelated feature: {feature_label}"
'''
FAKE_PROMPTS = "Fixture prompt one?\nFixture prompt two?\nFixture prompt three?"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class StaticServer:
    """Serves a folder over HTTP on 127.0.0.1 and counts requests."""

    def __init__(self, root) -> None:
        self.paths: list[str] = []
        owner = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.paths.append(self.path)
                super().do_GET()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def mirror(tmp_path, monkeypatch):
    root = tmp_path / "mirror"
    root.mkdir()
    (root / "judge.py").write_text(FAKE_JUDGE_PY)
    (root / "prompts.txt").write_text(FAKE_PROMPTS)
    for name in ("ESR_LOCAL_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    with StaticServer(root) as server:
        monkeypatch.setenv(paper_assets.BASE_URL_ENV, server.url)
        monkeypatch.setenv(paper_assets.SHA256_ENV,
                           f"judge.py={_sha(FAKE_JUDGE_PY)},prompts.txt={_sha(FAKE_PROMPTS)}")
        server.root = root
        yield server


def test_pinned_defaults_point_at_the_reference_commit(monkeypatch):
    monkeypatch.delenv(paper_assets.BASE_URL_ENV, raising=False)
    monkeypatch.delenv(paper_assets.SHA256_ENV, raising=False)
    assert paper_assets.asset_url(paper_assets.JUDGE_PY) == (
        "https://raw.githubusercontent.com/agencyenterprise/endogenous-steering-resistance/"
        "3c29a49f9077fa1df58f5e90b5cca7ae8621311c/judge.py")
    assert paper_assets.expected_sha256(paper_assets.JUDGE_PY) == (
        "4d726e5b6bbf4f82075602bfa0ab7a19de8096e3a0f4969cdb36d4a403fe590c", True)
    assert paper_assets.expected_sha256(paper_assets.PROMPTS_TXT) == (
        "a3bcbf82a44046c3fdcb9b65c58b1254ee8976401214533a5a550f0aa00a55d3", True)


def test_paper_rubric_is_read_from_the_syntax_tree_and_builds_the_papers_message(mirror, tmp_path):
    rubric = resolve_rubric("paper")
    assert rubric.system == "Fixture system line one. Fixture system line two."
    assert rubric.instructions == "Fixture instructions.\nSplit into attempts {like this}."
    assert rubric.id == "paper-unpinned"  # the hash was overridden: never passes for the paper's own
    system, user = build_judge_messages("Why is the sky blue?", "Because {physics}.\nTwo lines.", "cats", rubric)
    assert system == rubric.system
    assert user == ("Fixture instructions.\nSplit into attempts {like this}.\n\nPrompt: Why is the sky blue?\n"
                    "Response: Because {physics}.\nTwo lines.\nUnrelated feature: cats")
    info = make_judge("openai:m", base_url="http://127.0.0.1:9/v1", rubric="paper").describe()
    assert info["rubric_id"] == "paper-unpinned" and info["rubric_sha256"] == rubric.sha256
    assert info["rubric_source"].endswith(f"/judge.py sha256:{_sha(FAKE_JUDGE_PY)}")


def test_one_download_then_offline_from_the_cache(mirror, monkeypatch):
    first = resolve_rubric("paper")
    assert mirror.paths == ["/judge.py"]
    monkeypatch.setenv("ESR_LOCAL_OFFLINE", "1")
    assert resolve_rubric("paper") == first
    assert mirror.paths == ["/judge.py"]  # no second request
    cached = paper_assets.cache_path(paper_assets.JUDGE_PY)
    assert cached.read_text() == FAKE_JUDGE_PY and "3c29a49f9077fa1df58f5e90b5cca7ae8621311c" in str(cached)


def test_offline_and_not_cached_says_what_to_fetch_and_where(mirror, monkeypatch):
    monkeypatch.setenv("ESR_LOCAL_OFFLINE", "1")
    with pytest.raises(MissingResourceError) as info:
        resolve_rubric("paper")
    msg = str(info.value)
    assert "--rubric paper needs the reference judge.py" in msg
    assert f"{mirror.url}/judge.py" in msg and str(paper_assets.cache_path(paper_assets.JUDGE_PY)) in msg
    assert "\n" not in msg and mirror.paths == []


def test_a_tampered_file_is_refused_and_nothing_is_cached(mirror, monkeypatch):
    (mirror.root / "judge.py").write_text(FAKE_JUDGE_PY.replace("one", "ONE"))
    with pytest.raises(MissingResourceError, match="tampered or truncated download"):
        resolve_rubric("paper")
    folder = paper_assets.cache_path(paper_assets.JUDGE_PY).parent
    assert not (folder / "judge.py").exists() and not (folder / "judge.py.part").exists()


def test_paper_prompts(mirror, monkeypatch):
    ps = load_prompts("paper")
    assert ps.prompts == ["Fixture prompt one?", "Fixture prompt two?", "Fixture prompt three?"]
    assert ps.sha256 == _sha(FAKE_PROMPTS) and ps.source == "paper-unpinned"  # hash overridden, as the rubric
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_prompts("paper") == ps and mirror.paths == ["/prompts.txt"]


def test_a_judge_py_without_the_constants_is_a_format_error():
    with pytest.raises(FormatError, match="no module-level string INSTRUCTIONS"):
        paper_assets.read_string_constants('SYSTEM_PROMPT = "x"\n', ("SYSTEM_PROMPT", "INSTRUCTIONS"))
    with pytest.raises(FormatError, match="not a plain string literal"):
        paper_assets.read_string_constants('SYSTEM_PROMPT = f"{x}"\n', ("SYSTEM_PROMPT",))
    with pytest.raises(FormatError, match="does not parse"):
        paper_assets.read_string_constants("def (:\n", ("SYSTEM_PROMPT",))
    assert paper_assets.read_string_constants('A = "x" + ("y" "z")\nA = "last"\n', ("A",)) == {"A": "last"}


def test_cli_offline_without_cache_is_one_error_line(mirror, monkeypatch, tmp_path):
    """Through a real command that takes judge options: one Error: line, exit 1, nothing cached."""
    import click

    from esr_local.cli import main  # noqa: F401 - the error handling lives in the root group
    from esr_local.cli.judge_options import judge_from_options, judge_options

    @click.command()
    @judge_options
    def probe(**opts):
        judge_from_options(**opts).close()

    monkeypatch.setenv("ESR_LOCAL_OFFLINE", "1")
    main.add_command(probe, "probe-judge-options")
    try:
        r = CliRunner().invoke(main, ["probe-judge-options", "--judge", "openai:m", "--judge-base-url",
                                      "http://127.0.0.1:9/v1", "--rubric", "paper"])
    finally:
        main.commands.pop("probe-judge-options", None)
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: --rubric paper needs the reference judge.py")
    assert not paper_assets.cache_path(paper_assets.JUDGE_PY).exists()
    assert json.dumps(lines)  # plain text, no traceback


def test_cli_tampered_download_is_one_error_line_and_nothing_is_kept(mirror):
    import click

    from esr_local.cli import main
    from esr_local.cli.judge_options import judge_from_options, judge_options

    @click.command()
    @judge_options
    def probe(**opts):
        judge_from_options(**opts).close()

    (mirror.root / "judge.py").write_text(FAKE_JUDGE_PY + "\n# appended by someone\n")
    main.add_command(probe, "probe-judge-options")
    try:
        r = CliRunner().invoke(main, ["probe-judge-options", "--judge", "openai:m", "--judge-base-url",
                                      "http://127.0.0.1:9/v1", "--rubric", "paper"])
    finally:
        main.commands.pop("probe-judge-options", None)
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "tampered or truncated download" in lines[0] and lines[0].startswith("Error: ")
    folder = paper_assets.cache_path(paper_assets.JUDGE_PY).parent
    assert sorted(p.name for p in folder.iterdir()) == ["judge.py.lock"]
