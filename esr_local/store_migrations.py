"""Schema steps after store_schema.py's, registered on the same `MIGRATIONS` set (same rules: never edit a
released step; one transaction per step). Imported by esr_local.store, so every Store applies them.

- m014: `run_metrics_unflagged`, the `run_metrics` arithmetic without the latents flagged by calibration
  (what `esr-local metrics --exclude-flagged` computes in Python).
- m015: `lease_breaks`, who took a run's lease away from its holder (`esr-local run --resume RUN --break-lease`).
"""

from __future__ import annotations

from sqlite_utils import Database

from .store_schema import MIGRATIONS, _metrics_view

METRIC_COLUMNS_AFTER_COUNTS = (
    "multi_attempt_rate", "multi_attempt_rate_se", "esr_rate", "esr_rate_se", "improvement_rate",
    "improvement_rate_se", "mean_first_score", "mean_first_score_se", "mean_score_improvement",
    "mean_score_improvement_se",
)


@MIGRATIONS()
def m014_unflagged_metric_view(db: Database) -> None:
    """`run_metrics_unflagged`: per (run, condition), each run's own judge, flagged latents left out.

    Same columns and arithmetic as `run_metrics`. A condition whose latents are all flagged keeps its row,
    with n = 0, zero counts and NULL rates and means, as `metrics --exclude-flagged` lists it."""
    db.execute(_metrics_view("run_metrics_unflagged_counted", "run_id, condition",
                             "is_run_judge = 1 AND latent_flagged = 0"))
    nulls = ", ".join(f"NULL AS {c}" for c in METRIC_COLUMNS_AFTER_COUNTS)
    db.execute(
        f"""
        CREATE VIEW run_metrics_unflagged AS
        SELECT * FROM (
            SELECT * FROM run_metrics_unflagged_counted
            UNION ALL
            SELECT run_id, condition, 0 AS n, 0 AS multi_attempt_count, 0 AS improved_count, {nulls}
            FROM trial_outcomes WHERE is_run_judge = 1
            GROUP BY run_id, condition HAVING MIN(latent_flagged) = 1
        )
        ORDER BY run_id, condition
        """
    )


@MIGRATIONS()
def m015_lease_breaks(db: Database) -> None:
    """One row each time a run's lease was broken: the holder it was taken from (and whether that holder was
    seen dead on this host or could not be checked, on another host) and the process that broke it."""
    db.execute(
        """
        CREATE TABLE lease_breaks (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id),
            broken_utc TEXT NOT NULL,
            holder_pid INTEGER NOT NULL,
            holder_host TEXT NOT NULL,
            holder_process_start TEXT,
            holder_acquired_utc TEXT,
            holder_state TEXT NOT NULL CHECK (holder_state IN ('dead', 'unverifiable')),
            by_pid INTEGER NOT NULL,
            by_host TEXT NOT NULL,
            by_user TEXT,
            command_line TEXT
        )
        """
    )
    db.execute("CREATE INDEX lease_breaks_run_id ON lease_breaks(run_id)")


from . import store_migrations_traces  # noqa: E402,F401  m016 (trace regions located), registered after m015
