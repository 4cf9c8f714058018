"""SQLite faults: concurrent creation, not-a-database, foreign tables, folders, read-only and full disks.

Every case uses real SQLite files (and, for read-only and full disks, a real tmpfs mount) and checks three
things: one clear `Error:` line, the file left as it was, and a working database once the cause is fixed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from esr_local.cli import main
from esr_local.db_open import DiskFullError, ReadOnlyDatabaseError, open_database
from esr_local.errors import FormatError, MissingResourceError, UserInputError
from esr_local.store import Store

REFERENCE = {"experiment_config": {"model_name": "m"}, "results_by_feature": [{"feature_index_in_sae": 3, "trials": [
    {"prompt": "p", "seed": 1, "response": "r", "score": {"attempts": [{"attempt_text": "a", "score": 50}]}}]}]}


def _one_error_line(result) -> str:
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    return lines[0]


@pytest.fixture()
def reference_file(tmp_path) -> Path:
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(REFERENCE))
    return path


# -- concurrent creation -----------------------------------------------------------------------------

_CREATE = """
import sys, time
from esr_local.store import Store
start = float(sys.argv[2])
while time.time() < start:
    pass
with Store(sys.argv[1]) as s:
    s.create_run({"experiment": "concurrent"})
"""


def test_concurrent_creation_of_one_new_database(tmp_path):
    """Three real processes create the same new database at the same instant, six times over: all succeed."""
    for round_ in range(6):
        db = tmp_path / f"new{round_}.db"
        start = time.time() + 2.0  # every process is imported and spinning before the start
        procs = [subprocess.Popen([sys.executable, "-c", _CREATE, str(db), str(start)], stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], errors
        with Store(db, create=False) as store:
            assert len(store.list_runs()) == 3
            assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- files that are not (our) databases --------------------------------------------------------------

@pytest.mark.parametrize("command", [["runs"], ["metrics"], ["import", "{ref}"]])
def test_not_a_database_is_one_line_and_untouched(tmp_path, reference_file, command):
    db = tmp_path / "notes.db"
    db.write_bytes(b"these are my notes, not SQLite\n" * 50)
    before = db.read_bytes()
    args = [a.format(ref=reference_file) for a in command] + ["--db", str(db)]
    line = _one_error_line(CliRunner().invoke(main, args))
    assert "is not an SQLite database" in line and "--db" in line
    assert db.read_bytes() == before
    assert not Path(str(db) + "-wal").exists()


def test_foreign_runs_table_is_refused_untouched_and_works_once_fixed(tmp_path, reference_file):
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE runs (lap INTEGER, seconds REAL)")
    con.execute("INSERT INTO runs VALUES (1, 301.5)")
    con.commit()
    con.close()
    before = db.read_bytes()
    for args in (["import", str(reference_file)], ["runs"], ["metrics"]):
        line = _one_error_line(CliRunner().invoke(main, [*args, "--db", str(db)]))
        assert "made by another program (tables: runs)" in line
    assert db.read_bytes() == before
    con = sqlite3.connect(db)
    assert con.execute("SELECT * FROM runs").fetchall() == [(1, 301.5)]
    con.execute("DROP TABLE runs")  # the fix: the file no longer belongs to the other program
    con.commit()
    con.close()
    r = CliRunner().invoke(main, ["import", str(reference_file), "--db", str(db)])
    assert r.exit_code == 0, r.output
    with Store(db, create=False) as store:
        assert [run["experiment"] for run in store.list_runs()] == ["import"]


def test_open_database_errors_by_kind(tmp_path):
    with pytest.raises(UserInputError, match="is a folder"):
        open_database(tmp_path, create=True)
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    with pytest.raises(UserInputError, match="plain-file is a file, not a folder"):
        open_database(blocker / "sub" / "esr.db", create=True)
    with pytest.raises(MissingResourceError, match="no esr-local database"):
        open_database(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"\x00" * 4096)
    with pytest.raises(FormatError):
        open_database(bad, create=True)


def test_missing_database_for_a_read_command_is_not_created(tmp_path):
    db = tmp_path / "typo.db"
    line = _one_error_line(CliRunner().invoke(main, ["runs", "--db", str(db)]))
    assert "no esr-local database" in line
    assert not db.exists()


def test_db_env_pointing_at_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ESR_LOCAL_DB", str(tmp_path))
    line = _one_error_line(CliRunner().invoke(main, ["runs"]))
    assert "is a directory" in line and "--db" in line


# -- read-only and full disks (real tmpfs mounts) ----------------------------------------------------

def _mount_tmpfs(where: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (chmod cannot make files read-only for root)")
    where.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")


@contextlib.contextmanager
def _tmpfs(where: Path, size: str):
    _mount_tmpfs(where, size)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


def test_read_only_disk(tmp_path, reference_file):
    with _tmpfs(tmp_path / "mnt", "8m") as mnt:
        db = mnt / "esr.db"
        assert CliRunner().invoke(main, ["import", str(reference_file), "--db", str(db)]).exit_code == 0
        _remount(mnt, "ro")
        before = db.read_bytes()
        # reading still works: the database is opened read-only
        r = CliRunner().invoke(main, ["runs", "--db", str(db), "--json"])
        assert r.exit_code == 0, r.output
        assert [run["experiment"] for run in json.loads(r.output)] == ["import"]
        # writing is one clear line, nothing changed
        line = _one_error_line(CliRunner().invoke(main, ["import", str(reference_file), "--db", str(db)]))
        assert "read-only" in line
        new_db = mnt / "new.db"
        line = _one_error_line(CliRunner().invoke(main, ["import", str(reference_file), "--db", str(new_db)]))
        assert "read-only" in line or "could not be opened for writing" in line
        assert db.read_bytes() == before and not new_db.exists()
        _remount(mnt, "rw")  # fixed: the import works
        assert CliRunner().invoke(main, ["import", str(reference_file), "--db", str(db)]).exit_code == 0
        with Store(db, create=False) as store:
            assert len(store.list_runs()) == 2


def _fill(mnt: Path, leave: int) -> Path:
    """A file taking all but about `leave` bytes of the mount."""
    filler = mnt / "filler"
    room = max(0, os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize - leave)
    with open(filler, "wb") as fh:
        with contextlib.suppress(OSError):
            while room > 0:
                n = min(room, 65536)
                fh.write(b"\0" * n)
                fh.flush()
                room -= n
    return filler


def test_full_disk(tmp_path, reference_file):
    with _tmpfs(tmp_path / "mnt", "4m") as mnt:
        db = mnt / "esr.db"
        assert CliRunner().invoke(main, ["import", str(reference_file), "--db", str(db)]).exit_code == 0
        big = tmp_path / "big.json"  # needs about 1 MB of pages: more than the disk has left
        trials = [{"prompt": f"p{i}", "seed": i, "response": "x" * 2000,
                   "score": {"attempts": [{"attempt_text": "a" * 500, "score": 40}]}} for i in range(400)]
        big.write_text(json.dumps({"experiment_config": {"model_name": "m"},
                                   "results_by_feature": [{"feature_index_in_sae": 1, "trials": trials}]}))
        filler = _fill(mnt, leave=256 * 1024)  # the disk fills up in the middle of the import
        line = _one_error_line(CliRunner().invoke(main, ["import", str(big), "--db", str(db)]))
        assert "is full" in line and "free some space" in line
        filler.unlink()
        filler = _fill(mnt, leave=0)  # completely full: already at opening
        line = _one_error_line(CliRunner().invoke(main, ["import", str(big), "--db", str(db)]))
        assert "is full" in line and "free some space" in line
        filler.unlink()  # fixed
        with Store(db, create=False) as store:
            assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert len(store.list_runs()) == 1  # the failed imports left no run behind
        r = CliRunner().invoke(main, ["import", str(big), "--db", str(db)])
        assert r.exit_code == 0, r.output
        with Store(db, create=False) as store:
            assert len(store.list_runs()) == 2
            assert store.db.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 401


def test_translated_errors_are_still_sqlite_errors():
    """Code that catches sqlite3.OperationalError keeps working; the CLI sees an EsrError."""
    from esr_local.errors import EsrError

    for cls in (DiskFullError, ReadOnlyDatabaseError):
        assert issubclass(cls, sqlite3.OperationalError) and issubclass(cls, EsrError)
