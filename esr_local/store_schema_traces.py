"""Migration m013: stored traces (`esr-local trace`, paper Experiments 6 and 9).

`traces` holds one row per trace with everything its numbers depend on; `trace_values` holds the
numbers in long format, one row per (trace, latent, response token), so sqlite-utils and Datasette
users can filter and aggregate them directly; the view `trace_region_stats` gives per-trace, per-latent
mean and max activation over the paper's regions (esr_local/trace_regions.py says how they are cut).
Registered on store_schema.MIGRATIONS after m012 (store_schema imports this module last; it imports the
next steps, store_migrations, at its end).
"""

from __future__ import annotations

from sqlite_utils import Database

from .store_schema import MIGRATIONS

_REGION_COLUMNS = ",\n".join(
    f"            COUNT(CASE WHEN v.region = '{r}' THEN 1 END) AS {r}_tokens,\n"
    f"            AVG(CASE WHEN v.region = '{r}' THEN v.activation END) AS {r}_mean,\n"
    f"            MAX(CASE WHEN v.region = '{r}' THEN v.activation END) AS {r}_max"
    for r in ("off_topic", "correction", "on_topic", "single")
)


@MIGRATIONS()
def m013_traces(db: Database) -> None:
    """Per-token activations of chosen latents along a trial's response, with attempts and regions."""
    db.execute(
        """
        CREATE TABLE traces (
            id TEXT PRIMARY KEY,
            trial_id TEXT NOT NULL REFERENCES trials(id),
            run_id TEXT NOT NULL,
            latents_json TEXT NOT NULL,        -- the traced latents, in the order given
            layer INTEGER NOT NULL,            -- feature layer read (l_out-N)
            steered INTEGER NOT NULL,          -- 1: teacher-forced with the trial's steering vector
            boost REAL,                        -- the trial's boost (applied only when steered = 1)
            steering_layer INTEGER,
            steered_latent INTEGER,            -- the trial's latent (the vector's direction)
            prompt_tokens INTEGER NOT NULL,
            n_tokens INTEGER NOT NULL,         -- response tokens traced
            response_sha256 TEXT NOT NULL,     -- of the response text that was re-tokenized
            judgment_id INTEGER,               -- the judgment whose attempts mark the tokens (NULL: none)
            judge_key TEXT,
            n_attempts INTEGER NOT NULL,       -- judged attempts (0: not judged or the judgment failed)
            first_score REAL,
            last_score REAL,
            attempt_spans_json TEXT NOT NULL,  -- [[start, end, attempt], ...] character offsets found in the response
            correction_start INTEGER,          -- character offsets of the region cuts (NULL: no cut)
            on_topic_start INTEGER,
            model_sha256 TEXT NOT NULL,
            model_path TEXT,
            sae_source TEXT NOT NULL,          -- SAE / dictionary as the run names it
            sae_revision TEXT,
            sae_sha256 TEXT NOT NULL,          -- sha256 over the SAE files' sha256s
            encoder TEXT NOT NULL,             -- family:activation of the SAE encoder
            esr_local_version TEXT NOT NULL,
            llama_cpp_python_version TEXT,
            settings_json TEXT NOT NULL,       -- the rest: SAE files, n_ctx, threads, region rule, versions, machine
            created_utc TEXT NOT NULL,
            UNIQUE (trial_id, latents_json, steered)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE trace_values (
            trace_id TEXT NOT NULL REFERENCES traces(id),
            position INTEGER NOT NULL,         -- 0-based index among the response tokens
            token INTEGER NOT NULL,
            piece TEXT NOT NULL,
            attempt INTEGER NOT NULL,          -- judged attempt holding the token's first character (-1: none)
            region TEXT,                       -- off_topic | correction | on_topic | single | NULL
            latent INTEGER NOT NULL,
            activation REAL NOT NULL,
            PRIMARY KEY (trace_id, latent, position)
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE INDEX traces_run_id ON traces(run_id)")
    db.execute("CREATE INDEX trace_values_latent_region ON trace_values(latent, region)")
    db.execute(
        f"""
        CREATE VIEW trace_region_stats AS
        SELECT
            t.id AS trace_id, t.trial_id, t.run_id, t.layer, t.steered, t.boost, v.latent,
            t.n_attempts, t.first_score, t.last_score,
            CASE WHEN t.n_attempts = 2 AND t.last_score > t.first_score THEN 1 ELSE 0 END AS paper_episode,
            COUNT(*) AS n_tokens,
{_REGION_COLUMNS}
        FROM traces t JOIN trace_values v ON v.trace_id = t.id
        GROUP BY t.id, v.latent
        """
    )


from . import store_migrations  # noqa: E402,F401  m014, m015 (then m016): registered after m013
