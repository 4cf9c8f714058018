"""Runs in the experiment log: creating, finding and listing them, their settings, status, summary and
executions (`run_sessions`). Mixed into `esr_local.store.Store`, which provides `db`, `path`,
`transaction()` and `_query()`."""

from __future__ import annotations

import json
from typing import Any

from .errors import MissingResourceError, UserInputError
from .ids import new_id
from .store_schema import RUN_SETTING_COLUMNS
from .store_values import LIST_RUNS_HINT, RUN_STATUSES, TERMINAL_STATUSES, column_value, to_json, utc_now


class RunRecords:
    """The `runs` and `run_sessions` tables."""

    def create_run(self, settings: dict[str, Any]) -> str:
        """Record a new run (status 'started') and return its id.

        Keys of `settings` that name a `runs` column (store_schema.RUN_SETTING_COLUMNS) fill that column;
        the whole dict, unknown keys included, is kept in `settings_json`.
        """
        run_id = new_id()
        row: dict[str, Any] = {"id": run_id, "created_utc": utc_now(), "status": "started"}
        for column in RUN_SETTING_COLUMNS:
            if column in settings:
                row[column] = column_value(settings[column])
        row["settings_json"] = to_json({k: v for k, v in settings.items() if k != "spec_json"})  # stored once
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
            raise MissingResourceError(f"no run {run_id!r} in {self.path}; {LIST_RUNS_HINT}")
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

    def record_session(self, run_id: str, *, command_line: str | None, versions: dict, system_info: str,
                       machine: dict) -> int:
        """Log one execution of a run (its creation or a resume) with the software it ran on."""
        with self.transaction():
            return self.db["run_sessions"].insert({
                "run_id": run_id, "started_utc": utc_now(), "command_line": command_line,
                "versions_json": to_json(versions), "llama_cpp_system_info": system_info, "machine_json": to_json(machine),
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
        row = {k: column_value(v) for k, v in fields.items() if v is not None}
        if row:
            with self.transaction():
                self.db["runs"].update(run_id, row)

    def set_run_summary(self, run_id: str, summary: dict[str, Any]) -> None:
        """Store the end-of-execution summary (counts of planned, done and failed work)."""
        with self.transaction():
            self.db.execute("UPDATE runs SET summary_json = ? WHERE id = ?", (to_json(summary), run_id))

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
            raise MissingResourceError(f"no run {run_id!r} in {self.path}; {LIST_RUNS_HINT}")

    def merge_run_settings(self, run_id: str, values: dict[str, Any]) -> None:
        """Add keys to a run's settings_json (values decided during execution that a resume must reuse)."""
        with self.transaction():
            row = self._query("SELECT settings_json FROM runs WHERE id = ?", (run_id,))
            if not row:
                raise MissingResourceError(f"no run {run_id!r} in {self.path}; {LIST_RUNS_HINT}")
            settings = json.loads(row[0]["settings_json"] or "{}")
            settings.update(values)
            self.db.execute("UPDATE runs SET settings_json = ? WHERE id = ?", (to_json(settings), run_id))

    def run_judge_key(self, run_id: str) -> str | None:
        """The judge whose judgments are a run's results: the one it was created with, or for a run created
        without one (an import) the judge of its first recorded judgment; None while it has none."""
        rows = self._query("SELECT judge_key FROM runs WHERE id = ?", (run_id,))
        return rows[0]["judge_key"] if rows else None
