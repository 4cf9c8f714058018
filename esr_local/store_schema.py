"""Schema of the experiment log: an append-only set of named migrations (sqlite-utils `Migrations`).

Rules: never edit a migration once it has been released; fix mistakes with a new `mNNN_what` step.
Each step runs in its own transaction together with the row recording it in `_sqlite_migrations`.
Naming: plural tables, `id` keys, `<thing>_id` references, `*_utc` ISO-8601 UTC timestamps, `*_ms`
durations in milliseconds, `*_json` JSON text.
"""

from __future__ import annotations

from sqlite_utils import Database

try:
    from sqlite_utils import Migrations
except ImportError as exc:  # sqlite-utils < 4 has no transactional migrations or Database.atomic()
    raise ImportError("esr-local needs sqlite-utils >= 4.0: pip install -U 'sqlite-utils>=4'") from exc

MIGRATIONS = Migrations("esr_local")

# Columns of `runs` that `Store.create_run` fills from same-named settings keys.
RUN_SETTING_COLUMNS: tuple[str, ...] = (
    "experiment", "command_line", "esr_local_version", "llama_cpp_python_version", "llama_cpp_system_info",
    "model_name", "model_path", "model_sha256", "sae_source", "sae_family", "feature_layer", "steering_layer",
    "chat_template_mode", "temperature", "max_tokens", "repetition_penalty", "top_k", "top_p", "min_p", "n_ctx",
    "judge_backend", "judge_model", "rubric_version", "restart_gating", "prompts_file", "prompts_sha256",
    "prompts_per_latent", "replicates", "seed_base", "source_run_id", "source_file",
    "judge_key", "spec_json", "summary_json",
)


@MIGRATIONS()
def m001_runs(db: Database) -> None:
    """One row per experiment invocation, with everything needed to reproduce it."""
    db.execute(
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,              -- time-sortable ULID-style id (esr_local.ids)
            created_utc TEXT NOT NULL,
            finished_utc TEXT,                -- set when status becomes success, error or cancelled
            status TEXT NOT NULL DEFAULT 'started'
                CHECK (status IN ('started', 'success', 'error', 'cancelled')),
            error TEXT,
            experiment TEXT,                  -- esr, calibrate, import, ...
            command_line TEXT,
            esr_local_version TEXT,
            llama_cpp_python_version TEXT,
            llama_cpp_system_info TEXT,
            model_name TEXT,
            model_path TEXT,
            model_sha256 TEXT,
            sae_source TEXT,
            sae_family TEXT,
            feature_layer INTEGER,
            steering_layer INTEGER,
            chat_template_mode TEXT,
            temperature REAL,
            max_tokens INTEGER,
            repetition_penalty REAL,
            top_k INTEGER,
            top_p REAL,
            min_p REAL,
            n_ctx INTEGER,
            judge_backend TEXT,
            judge_model TEXT,
            rubric_version TEXT,
            restart_gating,                   -- no declared type: stored as given (a flag or a mode name)
            prompts_file TEXT,
            prompts_sha256 TEXT,
            prompts_per_latent INTEGER,
            replicates INTEGER,
            seed_base INTEGER,
            source_run_id TEXT,               -- the run whose latents/boosts/seeds were replayed, if any
            source_file TEXT,                 -- the imported file, for experiment = 'import'
            settings_json TEXT NOT NULL DEFAULT '{}'  -- the full settings dict, including unknown keys
        )
        """
    )


@MIGRATIONS()
def m002_calibrations_latents(db: Database) -> None:
    """Calibrated boosts (a cache shared by runs) and the latents each run steered."""
    # The cache key is every input that changes the calibrated boost; all parts are NOT NULL because
    # SQLite treats NULLs as distinct in UNIQUE constraints, which would let duplicates in.
    db.execute(
        """
        CREATE TABLE calibrations (
            id INTEGER PRIMARY KEY,
            model_sha256 TEXT NOT NULL,
            sae_source TEXT NOT NULL,
            latent INTEGER NOT NULL,
            layer INTEGER NOT NULL,
            judge TEXT NOT NULL,              -- judge backend/model
            settings_hash TEXT NOT NULL,      -- hash of target, bounds, prior, steps, sampling settings
            boost REAL,
            achieved_score REAL,              -- score re-measured at the calibrated boost, 0-1
            target REAL,
            steps_json TEXT NOT NULL DEFAULT '[]',
            created_utc TEXT NOT NULL,
            UNIQUE (model_sha256, sae_source, latent, layer, judge, settings_hash)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE latents (
            run_id TEXT NOT NULL REFERENCES runs(id),
            latent INTEGER NOT NULL,
            label TEXT,
            row_norm REAL,                    -- L2 norm of the SAE decoder row
            boost REAL,
            boost_source TEXT NOT NULL DEFAULT 'none'
                CHECK (boost_source IN ('calibrated', 'given', 'imported', 'replayed', 'none')),
            calibration_id INTEGER REFERENCES calibrations(id),
            error TEXT,                       -- a latent error excludes all of its trials from the metrics
            PRIMARY KEY (run_id, latent)
        )
        """
    )


@MIGRATIONS()
def m003_trials_judgments_attempts(db: Database) -> None:
    """Generated responses, their judgments and the judged attempts."""
    # Trial ids are the natural key spelled out (see store.trial_key), so resuming a run is "insert the
    # keys that are missing" and merging shard databases cannot create two rows for one trial.
    db.execute(
        """
        CREATE TABLE trials (
            id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id),
            condition TEXT NOT NULL,          -- steered, baseline, meta:<variant>, ...
            latent INTEGER NOT NULL,
            prompt_index INTEGER NOT NULL,
            replicate INTEGER NOT NULL,
            base_prompt TEXT,
            prompt TEXT,                      -- as sent to the model, after any meta-prompt
            boost REAL,
            seed INTEGER,
            response TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            stop_reason TEXT,
            generation_ms REAL,
            error TEXT,
            created_utc TEXT NOT NULL,
            extra_json TEXT NOT NULL DEFAULT '{}',
            UNIQUE (run_id, condition, latent, prompt_index, replicate)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE judgments (
            trial_id TEXT PRIMARY KEY REFERENCES trials(id),
            judge_backend TEXT,
            judge_model TEXT,
            rubric_version TEXT,
            raw_output TEXT,
            parse_status TEXT NOT NULL CHECK (parse_status IN ('ok', 'error')),
            error TEXT,
            tries INTEGER,
            latency_ms REAL,
            restart_gating,                   -- no declared type, as in runs
            n_attempts_raw INTEGER,           -- attempts the judge returned, before restart gating
            created_utc TEXT NOT NULL,
            extra_json TEXT NOT NULL DEFAULT '{}'
        )
        """
    )
    db.execute(
        """
        CREATE TABLE attempts (
            trial_id TEXT NOT NULL REFERENCES judgments(trial_id),
            attempt_index INTEGER NOT NULL,   -- 0-based, in the order the judge listed them
            text TEXT,
            score REAL,                       -- 0-100; NULL when the judge gave none (dropped by the metrics)
            PRIMARY KEY (trial_id, attempt_index)
        )
        """
    )
    db.execute("CREATE INDEX trials_run_id ON trials(run_id)")


@MIGRATIONS()
def m004_metric_views(db: Database) -> None:
    """Views with the paper's metrics, so Datasette and `sqlite-utils query` users see the same numbers
    as `esr-local metrics` (esr_local/metrics.py implements the same rules; tests compare the two)."""
    # trial_outcomes: one row per trial. A trial is counted when neither it, its latent nor its judgment
    # has an error and at least one attempt has a score; NULL scores are ignored before counting attempts.
    # is_multi_attempt / is_improved are 0 for trials that are not counted.
    db.execute(
        """
        CREATE VIEW trial_outcomes AS
        SELECT
            trial_id, run_id, condition, latent, prompt_index, replicate, boost, has_error,
            CASE WHEN has_error = 0 AND n_scored_attempts > 0 THEN 1 ELSE 0 END AS counted,
            n_scored_attempts, first_score, last_score,
            CASE WHEN has_error = 0 AND n_scored_attempts > 1 THEN 1 ELSE 0 END AS is_multi_attempt,
            CASE WHEN has_error = 0 AND n_scored_attempts > 1 AND last_score > first_score
                 THEN 1 ELSE 0 END AS is_improved
        FROM (
            SELECT
                t.id AS trial_id, t.run_id, t.condition, t.latent, t.prompt_index, t.replicate, t.boost,
                CASE WHEN COALESCE(t.error, '') <> '' OR COALESCE(l.error, '') <> ''
                          OR COALESCE(j.parse_status, 'ok') <> 'ok'
                     THEN 1 ELSE 0 END AS has_error,
                (SELECT COUNT(*) FROM attempts a
                  WHERE a.trial_id = t.id AND a.score IS NOT NULL) AS n_scored_attempts,
                (SELECT a.score FROM attempts a WHERE a.trial_id = t.id AND a.score IS NOT NULL
                  ORDER BY a.attempt_index LIMIT 1) AS first_score,
                (SELECT a.score FROM attempts a WHERE a.trial_id = t.id AND a.score IS NOT NULL
                  ORDER BY a.attempt_index DESC LIMIT 1) AS last_score
            FROM trials t
            LEFT JOIN latents l ON l.run_id = t.run_id AND l.latent = t.latent
            LEFT JOIN judgments j ON j.trial_id = t.id
        )
        """
    )
    # run_metrics: one row per (run_id, condition), columns = esr_local.metrics.METRIC_KEYS. Rates in
    # percent with binomial SEs sqrt(p(1-p)/N)*100; means with SE = stdev(ddof=1)/sqrt(count). NULL where
    # undefined (no counted trials, no multi-attempt trials, fewer than two values for a mean's SE).
    db.execute(
        """
        CREATE VIEW run_metrics AS
        WITH sums AS (
            SELECT run_id, condition,
                SUM(counted) AS n,
                SUM(is_multi_attempt) AS multi_attempt_count,
                SUM(is_improved) AS improved_count,
                AVG(CASE WHEN counted = 1 THEN first_score END) AS mean_first_score,
                AVG(CASE WHEN is_multi_attempt = 1 THEN last_score - first_score END) AS mean_score_improvement
            FROM trial_outcomes
            GROUP BY run_id, condition
        ),
        spread AS (
            SELECT o.run_id, o.condition,
                SUM(CASE WHEN o.counted = 1
                    THEN (o.first_score - s.mean_first_score) * (o.first_score - s.mean_first_score) END)
                    AS ss_first,
                SUM(CASE WHEN o.is_multi_attempt = 1
                    THEN (o.last_score - o.first_score - s.mean_score_improvement)
                       * (o.last_score - o.first_score - s.mean_score_improvement) END)
                    AS ss_improvement
            FROM trial_outcomes o JOIN sums s ON s.run_id = o.run_id AND s.condition = o.condition
            GROUP BY o.run_id, o.condition
        ),
        props AS (
            SELECT s.*, sp.ss_first, sp.ss_improvement,
                CASE WHEN s.n > 0 THEN CAST(s.multi_attempt_count AS REAL) / s.n END AS p_multi,
                CASE WHEN s.n > 0 THEN CAST(s.improved_count AS REAL) / s.n END AS p_esr,
                CASE WHEN s.multi_attempt_count > 0
                     THEN CAST(s.improved_count AS REAL) / s.multi_attempt_count END AS p_improvement
            FROM sums s JOIN spread sp ON sp.run_id = s.run_id AND sp.condition = s.condition
        )
        SELECT
            run_id, condition, n, multi_attempt_count, improved_count,
            100.0 * p_multi AS multi_attempt_rate,
            100.0 * sqrt(p_multi * (1.0 - p_multi) / n) AS multi_attempt_rate_se,
            100.0 * p_esr AS esr_rate,
            100.0 * sqrt(p_esr * (1.0 - p_esr) / n) AS esr_rate_se,
            100.0 * p_improvement AS improvement_rate,
            100.0 * sqrt(p_improvement * (1.0 - p_improvement) / multi_attempt_count) AS improvement_rate_se,
            mean_first_score,
            CASE WHEN n >= 2 THEN sqrt(ss_first / (n - 1)) / sqrt(n) END AS mean_first_score_se,
            mean_score_improvement,
            CASE WHEN multi_attempt_count >= 2
                 THEN sqrt(ss_improvement / (multi_attempt_count - 1)) / sqrt(multi_attempt_count) END
                AS mean_score_improvement_se
        FROM props
        ORDER BY run_id, condition
        """
    )


@MIGRATIONS()
def m005_run_sessions(db: Database) -> None:
    """One row each time a run is executed (created or resumed): a resume may happen on another machine or
    after llama.cpp was rebuilt (say, with CUDA), and the run row only holds what was true at creation."""
    db.execute(
        """
        CREATE TABLE run_sessions (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id),
            started_utc TEXT NOT NULL,
            command_line TEXT,
            versions_json TEXT,               -- esr-local, llama-cpp-python, gguf, numpy, ... versions
            llama_cpp_system_info TEXT,       -- SIMD flags / backends of the llama.cpp build in use
            machine_json TEXT
        )
        """
    )
    db.execute("CREATE INDEX run_sessions_run_id ON run_sessions(run_id)")


# Columns of `runs` before m006 (copied as they are when the table is rebuilt).
_RUNS_V1_COLUMNS = (
    "id", "created_utc", "finished_utc", "status", "error", "experiment", "command_line", "esr_local_version",
    "llama_cpp_python_version", "llama_cpp_system_info", "model_name", "model_path", "model_sha256", "sae_source",
    "sae_family", "feature_layer", "steering_layer", "chat_template_mode", "temperature", "max_tokens",
    "repetition_penalty", "top_k", "top_p", "min_p", "n_ctx", "judge_backend", "judge_model", "rubric_version",
    "restart_gating", "prompts_file", "prompts_sha256", "prompts_per_latent", "replicates", "seed_base",
    "source_run_id", "source_file", "settings_json",
)


@MIGRATIONS()
def m006_runs_partial_spec(db: Database) -> None:
    """Runs gain the `partial` status (some latent or trial failed), the frozen run spec, the judge that
    grades the run (`judge_key`) and the end-of-execution summary (failure counts).

    SQLite cannot change a CHECK constraint in place, so the table is rebuilt (the Store turns foreign
    keys off around migrations; the ids do not change, so the references stay valid)."""
    db.execute(
        """
        CREATE TABLE runs_v2 (
            id TEXT PRIMARY KEY,
            created_utc TEXT NOT NULL,
            finished_utc TEXT,
            status TEXT NOT NULL DEFAULT 'started'
                CHECK (status IN ('started', 'success', 'partial', 'error', 'cancelled')),
            error TEXT,
            experiment TEXT, command_line TEXT, esr_local_version TEXT, llama_cpp_python_version TEXT,
            llama_cpp_system_info TEXT, model_name TEXT, model_path TEXT, model_sha256 TEXT, sae_source TEXT,
            sae_family TEXT, feature_layer INTEGER, steering_layer INTEGER, chat_template_mode TEXT,
            temperature REAL, max_tokens INTEGER, repetition_penalty REAL, top_k INTEGER, top_p REAL, min_p REAL,
            n_ctx INTEGER, judge_backend TEXT, judge_model TEXT, rubric_version TEXT, restart_gating,
            prompts_file TEXT, prompts_sha256 TEXT, prompts_per_latent INTEGER, replicates INTEGER,
            seed_base INTEGER, source_run_id TEXT, source_file TEXT,
            settings_json TEXT NOT NULL DEFAULT '{}',
            judge_key TEXT,                   -- the judge whose judgments are this run's results
            spec_json TEXT,                   -- the frozen run spec (esr_local.runs.spec.RunSpec); resume reads only this
            summary_json TEXT                 -- counts of planned/failed calibrations, generations, judgments
        )
        """
    )
    cols = ", ".join(_RUNS_V1_COLUMNS)
    db.execute(f"INSERT INTO runs_v2 ({cols}) SELECT {cols} FROM runs")
    db.execute("DROP TABLE runs")
    db.execute("ALTER TABLE runs_v2 RENAME TO runs")


@MIGRATIONS()
def m007_latent_flags(db: Database) -> None:
    """Calibration flags per latent: a boost at a bound, or a re-measured score far from the target."""
    db.execute("ALTER TABLE latents ADD COLUMN achieved_score REAL")  # re-measured first-attempt score, 0-1
    db.execute("ALTER TABLE latents ADD COLUMN flags TEXT")  # '; '-joined reasons, NULL when not flagged


def _metrics_view(name: str, group: str, where: str) -> str:
    """The run_metrics arithmetic over trial_outcomes rows matching `where`, grouped by `group` columns.

    Rates in percent with binomial SEs sqrt(p(1-p)/N)*100; means with SE = stdev(ddof=1)/sqrt(count).
    NULL where undefined (no counted trials, no multi-attempt trials, fewer than two values for a mean's SE)."""
    keys = [c.strip() for c in group.split(",")]
    join = " AND ".join(f"sp.{k} = s.{k}" for k in keys)
    join_o = " AND ".join(f"o.{k} = s.{k}" for k in keys)
    return f"""
        CREATE VIEW {name} AS
        WITH sums AS (
            SELECT {group},
                SUM(counted) AS n,
                SUM(is_multi_attempt) AS multi_attempt_count,
                SUM(is_improved) AS improved_count,
                AVG(CASE WHEN counted = 1 THEN first_score END) AS mean_first_score,
                AVG(CASE WHEN is_multi_attempt = 1 THEN last_score - first_score END) AS mean_score_improvement
            FROM trial_outcomes WHERE {where}
            GROUP BY {group}
        ),
        spread AS (
            SELECT {", ".join(f"o.{k}" for k in keys)},
                SUM(CASE WHEN o.counted = 1
                    THEN (o.first_score - s.mean_first_score) * (o.first_score - s.mean_first_score) END)
                    AS ss_first,
                SUM(CASE WHEN o.is_multi_attempt = 1
                    THEN (o.last_score - o.first_score - s.mean_score_improvement)
                       * (o.last_score - o.first_score - s.mean_score_improvement) END)
                    AS ss_improvement
            FROM trial_outcomes o JOIN sums s ON {join_o}
            WHERE {" AND ".join("o." + w.strip() for w in where.split(" AND "))}
            GROUP BY {", ".join(f"o.{k}" for k in keys)}
        ),
        props AS (
            SELECT s.*, sp.ss_first, sp.ss_improvement,
                CASE WHEN s.n > 0 THEN CAST(s.multi_attempt_count AS REAL) / s.n END AS p_multi,
                CASE WHEN s.n > 0 THEN CAST(s.improved_count AS REAL) / s.n END AS p_esr,
                CASE WHEN s.multi_attempt_count > 0
                     THEN CAST(s.improved_count AS REAL) / s.multi_attempt_count END AS p_improvement
            FROM sums s JOIN spread sp ON {join}
        )
        SELECT
            {group}, n, multi_attempt_count, improved_count,
            100.0 * p_multi AS multi_attempt_rate,
            100.0 * sqrt(p_multi * (1.0 - p_multi) / n) AS multi_attempt_rate_se,
            100.0 * p_esr AS esr_rate,
            100.0 * sqrt(p_esr * (1.0 - p_esr) / n) AS esr_rate_se,
            100.0 * p_improvement AS improvement_rate,
            100.0 * sqrt(p_improvement * (1.0 - p_improvement) / multi_attempt_count) AS improvement_rate_se,
            mean_first_score,
            CASE WHEN n >= 2 THEN sqrt(ss_first / (n - 1)) / sqrt(n) END AS mean_first_score_se,
            mean_score_improvement,
            CASE WHEN multi_attempt_count >= 2
                 THEN sqrt(ss_improvement / (multi_attempt_count - 1)) / sqrt(multi_attempt_count) END
                AS mean_score_improvement_se
        FROM props
        ORDER BY {group}
    """


@MIGRATIONS()
def m008_judgments_by_judge(db: Database) -> None:
    """Judgments keyed by (trial, judge), so one run's responses can be graded by several judges; every
    failed try's error is kept (`errors_json`). Attempts belong to a judgment. The metric views gain the
    judge: `run_metrics` counts each run's own judge (runs.judge_key), `judge_metrics` every judge."""
    db.execute("DROP VIEW run_metrics")
    db.execute("DROP VIEW trial_outcomes")
    db.execute(
        """
        CREATE TABLE judgments_v2 (
            id INTEGER PRIMARY KEY,
            trial_id TEXT NOT NULL REFERENCES trials(id),
            judge_key TEXT NOT NULL,          -- backend:model:hash of the judge's description (esr_local.runs.judging)
            judge_spec TEXT,                  -- the --judge value that built it
            judge_backend TEXT,
            judge_model TEXT,
            rubric_version TEXT,
            raw_output TEXT,
            parse_status TEXT NOT NULL CHECK (parse_status IN ('ok', 'error')),
            error TEXT,                       -- the last failure
            errors_json TEXT NOT NULL DEFAULT '[]',  -- every failed try, in order
            tries INTEGER,
            latency_ms REAL,
            restart_gating,
            n_attempts_raw INTEGER,
            created_utc TEXT NOT NULL,
            extra_json TEXT NOT NULL DEFAULT '{}',
            UNIQUE (trial_id, judge_key)
        )
        """
    )
    legacy_key = "COALESCE(judge_backend, 'unknown') || ':' || COALESCE(judge_model, '') || ':legacy'"
    db.execute(
        f"""
        INSERT INTO judgments_v2 (trial_id, judge_key, judge_backend, judge_model, rubric_version, raw_output,
            parse_status, error, errors_json, tries, latency_ms, restart_gating, n_attempts_raw, created_utc, extra_json)
        SELECT trial_id, {legacy_key}, judge_backend, judge_model, rubric_version, raw_output, parse_status, error,
            CASE WHEN error IS NULL THEN '[]' ELSE json_array(error) END, tries, latency_ms, restart_gating,
            n_attempts_raw, created_utc, extra_json
        FROM judgments
        """
    )
    db.execute(
        """
        CREATE TABLE attempts_v2 (
            judgment_id INTEGER NOT NULL REFERENCES judgments(id),
            trial_id TEXT NOT NULL,           -- the judged trial (denormalised for easy queries)
            attempt_index INTEGER NOT NULL,   -- 0-based, in the order the judge listed them
            text TEXT,
            score REAL,                       -- 0-100; NULL when the judge gave none (dropped by the metrics)
            PRIMARY KEY (judgment_id, attempt_index)
        )
        """
    )
    db.execute(
        """
        INSERT INTO attempts_v2 (judgment_id, trial_id, attempt_index, text, score)
        SELECT j.id, a.trial_id, a.attempt_index, a.text, a.score
        FROM attempts a JOIN judgments_v2 j ON j.trial_id = a.trial_id
        """
    )
    db.execute("DROP TABLE attempts")
    db.execute("DROP TABLE judgments")
    db.execute("ALTER TABLE judgments_v2 RENAME TO judgments")
    db.execute("ALTER TABLE attempts_v2 RENAME TO attempts")
    db.execute("CREATE INDEX attempts_trial_id ON attempts(trial_id)")
    db.execute(
        """
        UPDATE runs SET judge_key = (SELECT MIN(j.judge_key) FROM judgments j JOIN trials t ON t.id = j.trial_id
                                     WHERE t.run_id = runs.id)
        WHERE judge_key IS NULL
        """
    )
    # trial_outcomes: one row per (trial, judgment); a trial without a judgment appears once under its
    # run's judge. Counted when neither the trial, its latent nor the judgment has an error and at least
    # one attempt has a score; NULL scores are ignored before counting attempts. is_run_judge marks the
    # judgments that are the run's own results; latent_flagged marks latents flagged by calibration.
    db.execute(
        """
        CREATE VIEW trial_outcomes AS
        SELECT
            trial_id, judgment_id, judge_key, is_run_judge, run_id, condition, latent, prompt_index, replicate,
            boost, latent_flagged, has_error,
            CASE WHEN has_error = 0 AND n_scored_attempts > 0 THEN 1 ELSE 0 END AS counted,
            n_scored_attempts, first_score, last_score,
            CASE WHEN has_error = 0 AND n_scored_attempts > 1 THEN 1 ELSE 0 END AS is_multi_attempt,
            CASE WHEN has_error = 0 AND n_scored_attempts > 1 AND last_score > first_score
                 THEN 1 ELSE 0 END AS is_improved
        FROM (
            SELECT
                t.id AS trial_id, j.id AS judgment_id, COALESCE(j.judge_key, r.judge_key) AS judge_key,
                CASE WHEN j.id IS NULL OR r.judge_key IS NULL OR j.judge_key = r.judge_key THEN 1 ELSE 0 END
                    AS is_run_judge,
                t.run_id, t.condition, t.latent, t.prompt_index, t.replicate, t.boost,
                CASE WHEN COALESCE(l.flags, '') <> '' THEN 1 ELSE 0 END AS latent_flagged,
                CASE WHEN COALESCE(t.error, '') <> '' OR COALESCE(l.error, '') <> ''
                          OR COALESCE(j.parse_status, 'ok') <> 'ok'
                     THEN 1 ELSE 0 END AS has_error,
                (SELECT COUNT(*) FROM attempts a
                  WHERE a.judgment_id = j.id AND a.score IS NOT NULL) AS n_scored_attempts,
                (SELECT a.score FROM attempts a WHERE a.judgment_id = j.id AND a.score IS NOT NULL
                  ORDER BY a.attempt_index LIMIT 1) AS first_score,
                (SELECT a.score FROM attempts a WHERE a.judgment_id = j.id AND a.score IS NOT NULL
                  ORDER BY a.attempt_index DESC LIMIT 1) AS last_score
            FROM trials t
            JOIN runs r ON r.id = t.run_id
            LEFT JOIN latents l ON l.run_id = t.run_id AND l.latent = t.latent
            LEFT JOIN judgments j ON j.trial_id = t.id
        )
        """
    )
    db.execute(_metrics_view("run_metrics", "run_id, condition", "is_run_judge = 1"))
    db.execute(_metrics_view("judge_metrics", "run_id, condition, judge_key", "judge_key IS NOT NULL"))


@MIGRATIONS()
def m009_run_leases(db: Database) -> None:
    """One executing process per run: the holder's pid, host and process start time (to tell a live
    holder from a dead one whose pid was reused)."""
    db.execute(
        """
        CREATE TABLE run_leases (
            run_id TEXT PRIMARY KEY REFERENCES runs(id),
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            process_start TEXT,               -- /proc/<pid>/stat start time where available
            acquired_utc TEXT NOT NULL
        )
        """
    )


@MIGRATIONS()
def m011_report_indexes(db: Database) -> None:
    """Indexes for the Datasette canned queries and the report (esr_local/data/datasette-metadata.json):
    failed judgments and generations are found without scanning every row, and judgments by judge (judge
    agreement, judge_metrics, re-grading) without scanning the table."""
    db.execute("CREATE INDEX judgments_failed ON judgments(trial_id) WHERE parse_status <> 'ok'")
    db.execute("CREATE INDEX judgments_judge_key ON judgments(judge_key)")
    db.execute("CREATE INDEX trials_failed ON trials(run_id) WHERE error IS NOT NULL AND error <> ''")


@MIGRATIONS()
def m010_latent_sets(db: Database) -> None:
    """Named sets of latents chosen by `esr-local latents select` (paper §1.3), with every filter's numbers:
    the candidates drawn, their labels, concreteness ratings and relevance maxima, and the settings
    (seed, thresholds, judge, prompt set) they were chosen with."""
    db.execute(
        """
        CREATE TABLE latent_sets (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_utc TEXT NOT NULL,
            model_name TEXT,
            sae_source TEXT NOT NULL,
            sae_family TEXT,
            d_sae INTEGER NOT NULL,
            feature_layer INTEGER,
            n_requested INTEGER NOT NULL,
            seed INTEGER NOT NULL,
            latents_json TEXT NOT NULL,        -- chosen latents, in order
            labels_json TEXT NOT NULL,         -- {latent: label} of the chosen latents
            funnel_json TEXT NOT NULL,         -- counts: candidates, labelled, concrete, irrelevant, chosen
            filters_json TEXT NOT NULL,        -- per-candidate numbers of every filter
            settings_json TEXT NOT NULL        -- what the choice depends on (thresholds, judge, prompts, versions)
        )
        """
    )


@MIGRATIONS()
def m012_detector_sets(db: Database) -> None:
    """Off-topic detector sets found by `esr-local detectors find` (paper §3.1): both rankings (strict and
    AUC), every ranked latent's statistics, and the prompts, responses and derangement they came from."""
    db.execute(
        """
        CREATE TABLE detector_sets (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_utc TEXT NOT NULL,
            model_name TEXT,
            sae_source TEXT NOT NULL,
            d_sae INTEGER NOT NULL,
            feature_layer INTEGER,
            rule TEXT NOT NULL,                -- strict | auc: which ranking latents_json holds
            latents_json TEXT NOT NULL,        -- the detector set, in rank order
            strict_json TEXT NOT NULL,         -- the strict rule's latents
            auc_json TEXT NOT NULL,            -- the top latents by separability AUC
            stats_json TEXT NOT NULL,          -- per ranked latent: auc, active fractions, means, maxima
            settings_json TEXT NOT NULL        -- layer, seed, derangement, sampling, thresholds, prompts, responses
        )
        """
    )


# Later steps live in their own modules and register themselves on MIGRATIONS, in this order. Each imports the
# next at its end (store_schema_traces -> store_migrations -> store_migrations_traces), so importing any one of
# them, or this module, registers all of them in order (importing them all here would register m014 before m013
# when store_schema_traces is imported first).
from . import store_schema_traces  # noqa: E402,F401  m013_traces, then m014-m016
