"""Latents, trials, judgments and attempts of runs. Mixed into `esr_local.store.Store`, which provides
`db`, `path`, `transaction()`, `_query()` and `run_judge_key()`."""

from __future__ import annotations

import sqlite3
from typing import Any

from .errors import MissingResourceError, UserInputError
from .store_values import (BOOST_SOURCES, JUDGMENT_COLUMNS, TRIAL_COLUMNS, DuplicateTrialError, column_value,
                           extra_fields, to_json, trial_key, utc_now)


class TrialRecords:
    """The `latents`, `trials`, `judgments` and `attempts` tables."""

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
        trial_row = {k: column_value(trial.get(k)) for k in TRIAL_COLUMNS}
        trial_row.update(id=trial_id, created_utc=trial.get("created_utc") or utc_now())
        extra = extra_fields(trial, skip={*TRIAL_COLUMNS, "id"})
        trial_row["extra_json"] = to_json(extra)
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
        row = {k: column_value(judgment.get(k)) for k in JUDGMENT_COLUMNS}
        status = judgment.get("parse_status") or ("error" if judgment.get("error") else "ok")
        if status not in ("ok", "error"):
            raise UserInputError(f"parse_status must be 'ok' or 'error', got {status!r}")
        extra = extra_fields(judgment, skip={*JUDGMENT_COLUMNS, "attempts", "trial_id", "errors"})
        errors = judgment.get("errors")
        if errors is None:
            errors = [judgment["error"]] if judgment.get("error") else []
        key = judgment.get("judge_key") or f"{judgment.get('judge_backend') or 'unknown'}:{judgment.get('judge_model') or ''}"
        row.update(trial_id=trial_id, judge_key=key, parse_status=status,
                   created_utc=judgment.get("created_utc") or utc_now(), extra_json=to_json(extra),
                   errors_json=to_json([str(e) for e in errors]))
        return row

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
