"""The experiment log: one SQLite file (via sqlite-utils) holding runs, latents, trials, judgments,
attempts and cached calibrations. The schema and the metric views are in store_schema.py.

The database is opened in WAL mode with a 30 s busy timeout, so a second process (another shard, a
Datasette instance, `esr-local metrics`) can read while a run writes. Every write happens in one
`BEGIN IMMEDIATE` transaction; in particular a trial, its judgment and its attempts are written together,
so an interrupted run never leaves a trial without its judgment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import math
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from .db_open import open_database
from .errors import EsrError, MissingResourceError, UserInputError
from .ids import new_id
from .store_schema import MIGRATIONS, RUN_SETTING_COLUMNS

RUN_STATUSES = ("started", "success", "partial", "error", "cancelled")
TERMINAL_STATUSES = ("success", "partial", "error", "cancelled")
BOOST_SOURCES = ("calibrated", "given", "imported", "replayed", "none")
CALIBRATION_KEY_COLUMNS = ("model_sha256", "sae_source", "latent", "layer", "judge", "settings_hash")

_TRIAL_COLUMNS = (
    "run_id", "condition", "latent", "prompt_index", "replicate", "base_prompt", "prompt", "boost", "seed",
    "response", "prompt_tokens", "completion_tokens", "stop_reason", "generation_ms", "error", "created_utc",
)
_JUDGMENT_COLUMNS = (
    "judge_key", "judge_spec", "judge_backend", "judge_model", "rubric_version", "raw_output", "parse_status",
    "error", "errors_json", "tries", "latency_ms", "restart_gating", "n_attempts_raw", "created_utc",
)
_LIST_RUNS_HINT = "run `esr-local runs` to list the runs in this database"


class DuplicateTrialError(EsrError):
    """A trial with the same (run, condition, latent, prompt_index, replicate) is already recorded."""


def utc_now() -> str:
    """The current UTC time as an ISO-8601 string with milliseconds."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def trial_key(run_id: str, condition: str, latent: int, prompt_index: int, replicate: int) -> str:
    """The deterministic id of a trial: `run_id:condition:latent:prompt_index:replicate`.

    Unambiguous even when the condition contains ':' because run ids never do and the last three
    parts are integers.
    """
    return f"{run_id}:{condition}:{int(latent)}:{int(prompt_index)}:{int(replicate)}"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _column_value(value: Any) -> Any:
    """A settings value as SQLite can store it: scalars as-is, paths as text, containers as JSON."""
    if value is None or isinstance(value, (str, int, float, bytes)):
        return value
    if isinstance(value, Path):
        return str(value)
    return _json(value)


def _extra(record: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    """The extra_json content of a record: its `extra_json` (JSON text or dict), its `extra` dict, then any
    keys that are not columns."""
    given = record.get("extra_json") or {}
    extra = dict(json.loads(given) if isinstance(given, str) else given)
    extra.update(record.get("extra") or {})
    extra.update({k: v for k, v in record.items() if k not in skip and k not in ("extra", "extra_json")})
    return extra


class Store:
    """The SQLite experiment log. `Store(path)` creates the file (and its folder) and migrates it."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        """Open (and by default create) the database at `path`; create=False raises if it is missing."""
        self.path = Path(path).expanduser()
        # WAL, synchronous=NORMAL, foreign keys, check_same_thread=False (self._lock serialises use) and one
        # clear error for a missing/foreign/read-only/full database: esr_local.db_open.
        conn = open_database(self.path, create=create)
        self.db = Database(conn)
        self._lock = threading.RLock()
        try:
            conn.execute("SELECT sqrt(4.0)").fetchone()
        except sqlite3.OperationalError:  # SQLite built without math functions: the views need sqrt()
            conn.create_function("sqrt", 1, lambda x: None if x is None or x < 0 else math.sqrt(x),
                                 deterministic=True)
        # Migrate under the write lock so two processes opening a new file at once cannot both apply a
        # step; a database that is already current is only read.
        if MIGRATIONS.pending(self.db):
            # Some steps rebuild a table (SQLite cannot alter a CHECK constraint); foreign keys must be off
            # for that, and the pragma only takes effect outside a transaction.
            self.db.execute("PRAGMA foreign_keys = OFF")
            try:
                with self.transaction():
                    MIGRATIONS.apply(self.db)
                    broken = self.db.execute("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise EsrError(f"migrating {self.path} would break {len(broken)} references; "
                                       "the database was left as it was")
            finally:
                self.db.execute("PRAGMA foreign_keys = ON")

    # -- plumbing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Store]:
        """A write transaction (`BEGIN IMMEDIATE`, so the write lock is taken up front and the busy
        timeout applies); nested calls become savepoints. Everything inside commits or rolls back together."""
        with self._lock:
            conn = self.db.conn
            if conn.in_transaction:
                with self.db.atomic():  # a savepoint inside the open transaction
                    yield self
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple | list = ()) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.db.query(sql, params))

    # -- runs ---------------------------------------------------------------------------------------

    def create_run(self, settings: dict[str, Any]) -> str:
        """Record a new run (status 'started') and return its id.

        Keys of `settings` that name a `runs` column (store_schema.RUN_SETTING_COLUMNS) fill that column;
        the whole dict, unknown keys included, is kept in `settings_json`.
        """
        run_id = new_id()
        row: dict[str, Any] = {"id": run_id, "created_utc": utc_now(), "status": "started"}
        for column in RUN_SETTING_COLUMNS:
            if column in settings:
                row[column] = _column_value(settings[column])
        row["settings_json"] = _json({k: v for k, v in settings.items() if k != "spec_json"})  # stored once
        with self.transaction():
            self.db["runs"].insert(row)
        return run_id

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The `runs` row for an id or a unique id prefix, plus `settings` (settings_json parsed)."""
        rows = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows and run_id:
            prefix = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            rows = self._query("SELECT * FROM runs WHERE id LIKE ? ESCAPE '\\' ORDER BY id", (prefix + "%",))
        if not rows:
            raise MissingResourceError(f"no run {run_id!r} in {self.path}; {_LIST_RUNS_HINT}")
        if len(rows) > 1:
            ids = ", ".join(row["id"] for row in rows[:3]) + (", ..." if len(rows) > 3 else "")
            raise UserInputError(f"run prefix {run_id!r} matches {len(rows)} runs ({ids}); give more characters")
        row = rows[0]
        row["settings"] = json.loads(row["settings_json"] or "{}")
        return row

    def list_runs(self) -> list[dict[str, Any]]:
        """All `runs` rows, oldest first, each with an extra `n_trials` count and `display_status`: the
        status, except that a `started` run whose executing process is gone shows as `interrupted`."""
        rows = self._query(
            "SELECT runs.*, (SELECT COUNT(*) FROM trials WHERE trials.run_id = runs.id) AS n_trials, "
            "l.pid AS lease_pid, l.host AS lease_host, l.process_start AS lease_process_start "
            "FROM runs LEFT JOIN run_leases l ON l.run_id = runs.id ORDER BY id"
        )
        from .leases import holder_alive

        for row in rows:
            status = row["status"]
            if status == "started" and row["experiment"] != "import":
                lease = None if row["lease_pid"] is None else {
                    "pid": row["lease_pid"], "host": row["lease_host"], "process_start": row["lease_process_start"]}
                if lease is None or not holder_alive(lease):
                    status = "interrupted"
                else:
                    status = "running"
            row["display_status"] = status
        return rows

    # -- leases -------------------------------------------------------------------------------------

    def lease(self, run_id: str) -> dict[str, Any] | None:
        """The lease row of a run (pid, host, process_start, acquired_utc), or None."""
        rows = self._query("SELECT * FROM run_leases WHERE run_id = ?", (run_id,))
        return rows[0] if rows else None

    def take_lease(self, run_id: str, holder: dict[str, Any], *, is_alive) -> dict[str, Any] | None:
        """Make `holder` (pid, host, process_start) the run's executing process, atomically. Returns None
        on success, or the current holder's row when `is_alive(row)` says it still runs."""
        with self.transaction():
            rows = self._query("SELECT * FROM run_leases WHERE run_id = ?", (run_id,))
            if rows and is_alive(rows[0]) and (rows[0]["pid"], rows[0]["host"]) != (holder["pid"], holder["host"]):
                return rows[0]
            self.db.execute(
                "INSERT INTO run_leases (run_id, pid, host, process_start, acquired_utc) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id) DO UPDATE SET pid = excluded.pid, host = excluded.host, "
                "process_start = excluded.process_start, acquired_utc = excluded.acquired_utc",
                (run_id, holder["pid"], holder["host"], holder.get("process_start"), utc_now()),
            )
        return None

    def release_lease(self, run_id: str, holder: dict[str, Any]) -> None:
        """Drop the run's lease if `holder` still holds it."""
        with self.transaction():
            self.db.execute("DELETE FROM run_leases WHERE run_id = ? AND pid = ? AND host = ?",
                            (run_id, holder["pid"], holder["host"]))

    def record_session(self, run_id: str, *, command_line: str | None, versions: dict, system_info: str,
                       machine: dict) -> int:
        """Log one execution of a run (its creation or a resume) with the software it ran on."""
        with self.transaction():
            return self.db["run_sessions"].insert({
                "run_id": run_id, "started_utc": utc_now(), "command_line": command_line,
                "versions_json": _json(versions), "llama_cpp_system_info": system_info, "machine_json": _json(machine),
            }).last_pk

    def sessions(self, run_id: str) -> list[dict[str, Any]]:
        """The executions of a run, oldest first."""
        return self._query("SELECT * FROM run_sessions WHERE run_id = ? ORDER BY id", (run_id,))

    def update_run(self, run_id: str, fields: dict[str, Any]) -> None:
        """Fill run columns resolved only at execution time (layer, SAE family, judge...). Keys must be
        RUN_SETTING_COLUMNS; None values are skipped so a known value is never erased."""
        unknown = set(fields) - set(RUN_SETTING_COLUMNS)
        if unknown:
            raise UserInputError(f"not run columns: {', '.join(sorted(unknown))}")
        row = {k: _column_value(v) for k, v in fields.items() if v is not None}
        if row:
            with self.transaction():
                self.db["runs"].update(run_id, row)

    def set_run_summary(self, run_id: str, summary: dict[str, Any]) -> None:
        """Store the end-of-execution summary (counts of planned, done and failed work)."""
        with self.transaction():
            self.db.execute("UPDATE runs SET summary_json = ? WHERE id = ?", (_json(summary), run_id))

    def set_run_status(self, run_id: str, status: str, error: str | None = None) -> None:
        """Set a run's status and error; terminal statuses (success, error, cancelled) set finished_utc."""
        if status not in RUN_STATUSES:
            raise UserInputError(f"run status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        finished = utc_now() if status in TERMINAL_STATUSES else None
        with self.transaction():
            cursor = self.db.execute(
                "UPDATE runs SET status = ?, error = ?, finished_utc = ? WHERE id = ?",
                (status, error, finished, run_id),
            )
        if cursor.rowcount == 0:
            raise MissingResourceError(f"no run {run_id!r} in {self.path}; {_LIST_RUNS_HINT}")

    # -- latents ------------------------------------------------------------------------------------

    def upsert_latent(
        self,
        run_id: str,
        latent: int,
        *,
        label: str | None,
        row_norm: float | None,
        boost: float | None,
        boost_source: str,
        calibration_id: int | None = None,
        error: str | None = None,
        achieved_score: float | None = None,
        flags: str | None = None,
    ) -> None:
        """Insert or replace the record of one latent of a run (its label, decoder-row norm, boost, the
        score re-measured at a calibrated boost and the calibration flags)."""
        if boost_source not in BOOST_SOURCES:
            raise UserInputError(f"boost_source must be one of {', '.join(BOOST_SOURCES)}, got {boost_source!r}")
        with self.transaction():
            self.db.execute(
                """
                INSERT INTO latents (run_id, latent, label, row_norm, boost, boost_source, calibration_id, error,
                                     achieved_score, flags)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (run_id, latent) DO UPDATE SET
                    label = excluded.label, row_norm = excluded.row_norm, boost = excluded.boost,
                    boost_source = excluded.boost_source, calibration_id = excluded.calibration_id,
                    error = excluded.error, achieved_score = excluded.achieved_score, flags = excluded.flags
                """,
                (run_id, int(latent), label, row_norm, boost, boost_source, calibration_id, error,
                 achieved_score, flags),
            )

    def named_row(self, table: str, name: str, *, what: str, make_one: str) -> dict[str, Any]:
        """The row of a named set table (`latent_sets`, `detector_sets`) whose name or id is `name`;
        MissingResourceError listing the known names, or saying which command makes one."""
        rows = list(self.db[table].rows_where("name = ? OR id = ?", [name, name]))
        if rows:
            return rows[0]
        known = [r["name"] for r in self.db[table].rows_where(select="name", order_by="created_utc")]
        hint = f"known sets: {', '.join(known)}" if known else f"none stored yet: run `{make_one}`"
        raise MissingResourceError(f"no {what} named {name!r} in {self.path} ({hint})")

    def latents(self, run_id: str) -> list[dict[str, Any]]:
        """The `latents` rows of a run, by latent index."""
        return self._query("SELECT * FROM latents WHERE run_id = ? ORDER BY latent", (run_id,))

    # -- trials -------------------------------------------------------------------------------------

    def finished_trial_keys(self, run_id: str) -> set[tuple[str, int, int, int]]:
        """(condition, latent, prompt_index, replicate) of every trial already recorded for a run."""
        rows = self._query(
            "SELECT condition, latent, prompt_index, replicate FROM trials WHERE run_id = ?", (run_id,)
        )
        return {(r["condition"], r["latent"], r["prompt_index"], r["replicate"]) for r in rows}

    def delete_failed_trials(self, run_id: str) -> int:
        """Remove a run's trials whose generation failed, with any judgments and attempts, so a resume
        generates them again. Trials with a response are kept (a failed judgment is re-judged, see
        `trials_to_judge`). Returns how many were removed."""
        failed = "SELECT id FROM trials WHERE run_id = ? AND error IS NOT NULL"
        with self.transaction():
            ids = [r[0] for r in self.db.execute(failed, (run_id,)).fetchall()]
            for table, column in (("attempts", "trial_id"), ("judgments", "trial_id"), ("trials", "id")):
                self.db.conn.executemany(f"DELETE FROM {table} WHERE {column} = ?", [(i,) for i in ids])
        return len(ids)

    def trials_to_judge(self, run_id: str, judge_key: str, *, only_failed: bool = False) -> list[dict[str, Any]]:
        """Trials of a run with a response whose judgment by `judge_key` is missing or failed (only the
        failed ones with only_failed), in trial order."""
        cond = "j.parse_status = 'error'" if only_failed else "(j.id IS NULL OR j.parse_status = 'error')"
        return self._query(
            "SELECT t.* FROM trials t LEFT JOIN judgments j ON j.trial_id = t.id AND j.judge_key = ? "
            f"WHERE t.run_id = ? AND t.error IS NULL AND t.response IS NOT NULL AND {cond} "
            "ORDER BY t.condition, t.latent, t.prompt_index, t.replicate",
            (judge_key, run_id),
        )

    def judge_keys(self, run_id: str) -> list[dict[str, Any]]:
        """The judges that graded a run: judge_key, judge_spec, n judgments and n failed, by key."""
        return self._query(
            "SELECT j.judge_key, MIN(j.judge_spec) AS judge_spec, COUNT(*) AS n, "
            "SUM(j.parse_status = 'error') AS n_failed FROM judgments j JOIN trials t ON t.id = j.trial_id "
            "WHERE t.run_id = ? GROUP BY j.judge_key ORDER BY j.judge_key", (run_id,))

    def record_judgment(self, trial_id: str, judgment: dict[str, Any], attempts: list[dict[str, Any]]) -> None:
        """Write (or replace) the judgment of one trial by one judge (`judgment["judge_key"]`) and its
        attempts, in one transaction; the trial and other judges' judgments are untouched."""
        with self.transaction():
            row = self._judgment_row(trial_id, judgment)
            old = self.db.execute("SELECT id FROM judgments WHERE trial_id = ? AND judge_key = ?",
                                  (trial_id, row["judge_key"])).fetchone()
            if old:
                self.db.execute("DELETE FROM attempts WHERE judgment_id = ?", (old[0],))
                self.db.execute("DELETE FROM judgments WHERE id = ?", (old[0],))
            self._insert_judgment(trial_id, row, attempts)

    def _insert_judgment(self, trial_id: str, row: dict[str, Any], attempts: list[dict[str, Any]]) -> None:
        judgment_id = self.db["judgments"].insert(row).last_pk
        self.db["attempts"].insert_all(
            {
                "judgment_id": judgment_id,
                "trial_id": trial_id,
                "attempt_index": index,
                "text": attempt.get("text", attempt.get("attempt_text")),
                "score": None if attempt.get("score") is None else float(attempt["score"]),
            }
            for index, attempt in enumerate(attempts)
        )

    def merge_run_settings(self, run_id: str, values: dict[str, Any]) -> None:
        """Add keys to a run's settings_json (values decided during execution that a resume must reuse)."""
        with self.transaction():
            row = self._query("SELECT settings_json FROM runs WHERE id = ?", (run_id,))
            if not row:
                raise MissingResourceError(f"no run {run_id!r} in {self.path}; {_LIST_RUNS_HINT}")
            settings = json.loads(row[0]["settings_json"] or "{}")
            settings.update(values)
            self.db.execute("UPDATE runs SET settings_json = ? WHERE id = ?", (_json(settings), run_id))

    def record_trial(
        self, trial: dict[str, Any], judgment: dict[str, Any] | None, attempts: list[dict[str, Any]]
    ) -> str:
        """Write a trial, its judgment (None if it was never judged) and its attempts in one transaction.

        `trial` needs run_id, condition, latent, prompt_index and replicate; the other trial columns are
        optional; `extra_json` (text or dict), `extra` (a dict) and any unknown keys are merged into
        extra_json. `judgment` holds judgments
        columns (parse_status defaults to 'error' when `error` is set, else 'ok'); an `attempts` key in
        it is ignored and unknown keys go to its extra_json. `attempts` are dicts with `text` (or
        `attempt_text`) and `score` (or None), in order. Returns the trial id. Raises
        DuplicateTrialError if the trial is already recorded; nothing is written then.
        """
        missing = [k for k in ("run_id", "condition", "latent", "prompt_index", "replicate") if trial.get(k) is None]
        if missing:
            raise UserInputError(f"a trial needs {', '.join(missing)}")
        if attempts and judgment is None:
            raise UserInputError("attempts were given without a judgment; pass the judgment they came from")
        trial_id = trial_key(*(trial[k] for k in ("run_id", "condition", "latent", "prompt_index", "replicate")))
        trial_row = {k: _column_value(trial.get(k)) for k in _TRIAL_COLUMNS}
        trial_row.update(id=trial_id, created_utc=trial.get("created_utc") or utc_now())
        extra = _extra(trial, skip={*_TRIAL_COLUMNS, "id"})
        trial_row["extra_json"] = _json(extra)
        with self.transaction():
            if self._query("SELECT 1 FROM runs WHERE id = ?", (trial["run_id"],)) == []:
                raise MissingResourceError(f"no run {trial['run_id']!r} in {self.path}; create the run first")
            try:
                self.db["trials"].insert(trial_row)
            except sqlite3.IntegrityError as exc:
                if "UNIQUE" not in str(exc):
                    raise UserInputError(f"trial {trial_id} cannot be stored: {exc}") from exc
                raise DuplicateTrialError(
                    f"trial {trial_id} is already recorded; skip the keys from finished_trial_keys() when resuming"
                ) from exc
            if judgment is not None:
                row = self._judgment_row(trial_id, judgment)
                self._insert_judgment(trial_id, row, attempts)
                # A run created without a judge (an import) takes its first judgment's judge as its own, so
                # a later re-grade by another judge neither replaces its results nor doubles them (run_metrics).
                self.db.execute("UPDATE runs SET judge_key = ? WHERE id = ? AND judge_key IS NULL",
                                (row["judge_key"], trial["run_id"]))
        return trial_id

    @staticmethod
    def _judgment_row(trial_id: str, judgment: dict[str, Any]) -> dict[str, Any]:
        row = {k: _column_value(judgment.get(k)) for k in _JUDGMENT_COLUMNS}
        status = judgment.get("parse_status") or ("error" if judgment.get("error") else "ok")
        if status not in ("ok", "error"):
            raise UserInputError(f"parse_status must be 'ok' or 'error', got {status!r}")
        extra = _extra(judgment, skip={*_JUDGMENT_COLUMNS, "attempts", "trial_id", "errors"})
        errors = judgment.get("errors")
        if errors is None:
            errors = [judgment["error"]] if judgment.get("error") else []
        key = judgment.get("judge_key") or f"{judgment.get('judge_backend') or 'unknown'}:{judgment.get('judge_model') or ''}"
        row.update(trial_id=trial_id, judge_key=key, parse_status=status,
                   created_utc=judgment.get("created_utc") or utc_now(), extra_json=_json(extra),
                   errors_json=_json([str(e) for e in errors]))
        return row

    def run_judge_key(self, run_id: str) -> str | None:
        """The judge whose judgments are a run's results: the one it was created with, or for a run created
        without one (an import) the judge of its first recorded judgment; None while it has none."""
        rows = self._query("SELECT judge_key FROM runs WHERE id = ?", (run_id,))
        return rows[0]["judge_key"] if rows else None

    def trials(self, run_id: str, judge_key: str | None = None) -> list[dict[str, Any]]:
        """The trials of a run ordered by (condition, latent, prompt_index, replicate). Each is the
        `trials` row plus `judgment` (the `judgments` row by `judge_key`, default the run's own judge; or
        None) and `attempts` (that judgment's attempt rows in order). A run without a judge key (an
        import) shows each trial's only judgment."""
        key = judge_key or self.run_judge_key(run_id)
        trials = self._query(
            "SELECT * FROM trials WHERE run_id = ? ORDER BY condition, latent, prompt_index, replicate", (run_id,)
        )
        where, params = ("AND j.judge_key = ?", (run_id, key)) if key else ("", (run_id,))
        judgments = {
            row["trial_id"]: row
            for row in self._query(
                f"SELECT j.* FROM judgments j JOIN trials t ON t.id = j.trial_id WHERE t.run_id = ? {where} ORDER BY j.id",
                params,
            )
        }
        attempts: dict[int, list[dict[str, Any]]] = {}
        for row in self._query(
            "SELECT a.* FROM attempts a JOIN trials t ON t.id = a.trial_id WHERE t.run_id = ? "
            "ORDER BY a.judgment_id, a.attempt_index",
            (run_id,),
        ):
            attempts.setdefault(row["judgment_id"], []).append(row)
        for trial in trials:
            j = judgments.get(trial["id"])
            trial["judgment"] = j
            trial["attempts"] = attempts.get(j["id"], []) if j else []
        return trials

    # -- calibrations -------------------------------------------------------------------------------

    @staticmethod
    def _calibration_key(key: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in CALIBRATION_KEY_COLUMNS if key.get(k) is None]
        if missing:
            raise UserInputError(f"a calibration key needs {', '.join(missing)}")
        return {k: _column_value(key[k]) for k in CALIBRATION_KEY_COLUMNS}

    def get_calibration(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The cached calibration for `key` (model_sha256, sae_source, latent, layer, judge,
        settings_hash) as its row plus `steps` (steps_json parsed), or None if there is none."""
        clean = self._calibration_key(key)
        where = " AND ".join(f"{k} = ?" for k in CALIBRATION_KEY_COLUMNS)
        rows = self._query(f"SELECT * FROM calibrations WHERE {where}", [clean[k] for k in CALIBRATION_KEY_COLUMNS])
        if not rows:
            return None
        row = rows[0]
        row["steps"] = json.loads(row["steps_json"] or "[]")
        return row

    def put_calibration(self, key: dict[str, Any], result: dict[str, Any]) -> int:
        """Store (or replace) the calibration for `key`; `result` has boost, achieved_score, target and
        steps (a list of dicts or BisectionSteps) or steps_json (JSON text). Returns the calibration id,
        which stays the same when an entry is replaced."""
        clean = self._calibration_key(key)
        if "steps" not in result and isinstance(result.get("steps_json"), str):
            steps = json.loads(result["steps_json"])
        else:
            steps = [dataclasses.asdict(s) if dataclasses.is_dataclass(s) and not isinstance(s, type) else s
                     for s in result.get("steps", [])]
        values = {
            **clean,
            "boost": result.get("boost"),
            "achieved_score": result.get("achieved_score"),
            "target": result.get("target"),
            "steps_json": _json(steps),
            "created_utc": utc_now(),
        }
        columns = list(values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in CALIBRATION_KEY_COLUMNS)
        with self.transaction():
            self.db.execute(
                f"INSERT INTO calibrations ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
                f"ON CONFLICT ({', '.join(CALIBRATION_KEY_COLUMNS)}) DO UPDATE SET {updates}",
                [values[c] for c in columns],
            )
            where = " AND ".join(f"{k} = ?" for k in CALIBRATION_KEY_COLUMNS)
            row = self.db.execute(
                f"SELECT id FROM calibrations WHERE {where}", [clean[k] for k in CALIBRATION_KEY_COLUMNS]
            ).fetchone()
        return int(row[0])
