"""Experiment runs, walked forward: options -> spec (create) -> plan -> execute (generate, judge, store).

- `spec`: the frozen RunSpec stored with a run; resume reads only it.
- `create`: options (or a replayed run) -> RunSpec -> run row.
- `conditions`: the Condition type (steered, baseline, meta, sweep, imported, ablation, prefill).
- `plan`: trials and batch groups from the spec alone.
- `boosts`: given / replayed / calibrated boosts and calibration flags.
- `execute`: the lease, generation, judging and storing; partial status when anything failed.
- `judging`: judgment rows, re-grading with another judge, cross-judge agreement.
"""

from .conditions import Condition
from .create import RunOptions, create_run
from .execute import RunBusyError, execute_run

__all__ = ["Condition", "RunBusyError", "RunOptions", "create_run", "execute_run"]
