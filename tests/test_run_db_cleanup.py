"""A failed `esr-local run` leaves no database behind that it created: cheap mistakes are caught before the
file is opened, later ones (a latent out of range, a bad prompts file) remove the new file, its WAL files
and the folders made for it. An existing database is never removed, and `--resume` never creates one."""

from __future__ import annotations

import sqlite3

import pytest
from click.testing import CliRunner

from esr_local.cli import main
from esr_local.store import Store
from esr_local.store_files import store_kept_only_with_a_run

# An HTTP judge that is never called (no judge check, fixed boost): no model is loaded for judging.
JUDGE = ["--judge", "openai:test-judge", "--judge-base-url", "http://127.0.0.1:9", "--skip-judge-check"]


def _error_line(args: list[str]) -> str:
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.output, r.output
    return lines[0]


@pytest.mark.parametrize("bad, needle", [
    (["--latent", "99999", "--boost", "1"], "out of range"),        # found once the SAE is open (store already open)
    (["--latent", "1", "--boost", "1", "--prompts", "{missing}"], "prompt"),
    (["--latent", "1", "--n-latents", "2"], "not both"),            # caught before the database is opened
    (["--latent", "1", "--boost", "1", "--judge", "bogus"], "unknown judge"),
])
def test_a_failed_new_run_leaves_no_database_and_no_folder(tmp_path, bad, needle):
    db = tmp_path / "new" / "sub" / "esr.db"
    args = [a.replace("{missing}", str(tmp_path / "nope.txt")) for a in bad]
    line = _error_line(["run", "--db", str(db), *args, *(JUDGE if "--judge" not in args else [])])
    assert needle in line
    assert not (tmp_path / "new").exists()  # no esr.db, -wal, -shm, nor the new/sub folders made for it


def test_a_failed_calibrate_leaves_no_database_either(tmp_path):
    db = tmp_path / "new" / "esr.db"
    assert "out of range" in _error_line(["calibrate", "--db", str(db), "--latent", "99999", *JUDGE])
    assert not (tmp_path / "new").exists()


def test_an_existing_database_is_kept_with_its_runs(tmp_path):
    db = tmp_path / "esr.db"
    with Store(db) as store:
        run_id = store.create_run({"experiment": "esr"})
    assert "out of range" in _error_line(["run", "--db", str(db), "--latent", "99999", "--boost", "1", *JUDGE])
    with Store(db, create=False) as store:
        assert [r["id"] for r in store.list_runs()] == [run_id]
    empty = tmp_path / "empty.db"  # existing but without runs: not this command's file, kept too
    Store(empty).close()
    _error_line(["run", "--db", str(empty), "--latent", "99999", "--boost", "1", *JUDGE])
    assert empty.is_file() and sqlite3.connect(empty).execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)


def test_resume_never_creates_a_database(tmp_path):
    db = tmp_path / "none.db"
    line = _error_line(["run", "--db", str(db), "--resume", "abc"])
    assert line.startswith("Error: no run 'abc' to resume: there is no database ") and str(db) in line
    assert not db.exists()


def test_the_guard_keeps_a_new_file_once_a_run_is_stored(tmp_path):
    db = tmp_path / "d" / "esr.db"
    with pytest.raises(RuntimeError), store_kept_only_with_a_run(db) as store:
        store.create_run({"experiment": "esr"})
        raise RuntimeError("after the first row")
    with Store(db, create=False) as store:  # the run row is a resumable record: kept
        assert len(store.list_runs()) == 1
    other = tmp_path / "e" / "esr.db"
    with store_kept_only_with_a_run(other) as store:  # success: open, file kept
        assert store.list_runs() == []
    store.close()
    assert other.is_file()


def test_the_guard_keeps_a_new_file_another_command_stored_something_in(tmp_path):
    """The file did not exist when this command began, but another command (here: a second connection)
    stored a row in it before this one failed: the file holds someone's data and stays."""
    db = tmp_path / "esr.db"
    with pytest.raises(RuntimeError), store_kept_only_with_a_run(db):
        con = sqlite3.connect(db)
        with con:
            con.execute("CREATE TABLE notes (text TEXT)")
            con.execute("INSERT INTO notes VALUES ('kept')")
        con.close()
        raise RuntimeError("this command fails before storing a run")
    con = sqlite3.connect(db)
    assert con.execute("SELECT text FROM notes").fetchall() == [("kept",)]
    con.close()
    gone = tmp_path / "gone.db"
    with pytest.raises(RuntimeError), store_kept_only_with_a_run(gone):  # a fresh schema alone is nothing to keep
        raise RuntimeError("fails at once")
    assert not gone.exists()
