"""Migration m016: trace rows say whether their regions were located, and `trace_region_stats` takes
`paper_episode` from `trial_outcomes` (registered on store_schema.MIGRATIONS after m015; store_schema
imports this module last).

- `traces.regions_note`: NULL when the regions were cut; "regions not located" when a multi-attempt
  response's cuts could not be found (its tokens' regions are then NULL).
- `traces.n_judged_attempts`: every attempt the judge returned. From m016 on `n_attempts`, `first_score`
  and `last_score` count scored attempts only, as `trial_outcomes` does (rows written before keep theirs).
- `paper_episode` = 1 when the trace's judgment is, in `trial_outcomes`, improved (`is_improved`) with
  exactly two scored attempts, and the regions were located. A trace whose judgment has since been
  replaced finds no `trial_outcomes` row and is 0 until traced again.
"""

from __future__ import annotations

from sqlite_utils import Database

from .store_schema import MIGRATIONS
from .store_schema_traces import _REGION_COLUMNS


@MIGRATIONS()
def m016_trace_regions_located(db: Database) -> None:
    """`traces.regions_note`, `traces.n_judged_attempts`; `trace_region_stats.paper_episode` from trial_outcomes."""
    db.execute("ALTER TABLE traces ADD COLUMN regions_note TEXT")
    db.execute("ALTER TABLE traces ADD COLUMN n_judged_attempts INTEGER")
    db.execute("DROP VIEW trace_region_stats")
    db.execute(
        f"""
        CREATE VIEW trace_region_stats AS
        SELECT
            t.id AS trace_id, t.trial_id, t.run_id, t.layer, t.steered, t.boost, v.latent,
            t.n_attempts, t.first_score, t.last_score, t.regions_note,
            CASE WHEN t.regions_note IS NULL AND o.is_improved = 1 AND o.n_scored_attempts = 2
                 THEN 1 ELSE 0 END AS paper_episode,
            COUNT(*) AS n_tokens,
{_REGION_COLUMNS}
        FROM traces t JOIN trace_values v ON v.trace_id = t.id
        LEFT JOIN trial_outcomes o ON o.trial_id = t.trial_id AND o.judgment_id = t.judgment_id
        GROUP BY t.id, v.latent
        """
    )
