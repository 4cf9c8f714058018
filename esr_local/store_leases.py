"""Run leases: which process executes a run (`run_leases`), and who broke one (`lease_breaks`). Mixed into `esr_local.store.Store`, which
provides `db`, `transaction()` and `_query()`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .store_values import utc_now


class LeaseRecords:
    """The `run_leases` and `lease_breaks` tables."""

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

    def break_lease(self, run_id: str, breaker: dict[str, Any], *, state_of: Callable[[dict[str, Any]], str],
                    command_line: str | None = None) -> dict[str, Any] | None:
        """Remove a run's lease and record who broke it (`lease_breaks`), in one transaction.

        `state_of(lease_row)` says why the holder may lose it ('dead' or 'unverifiable') or raises to refuse;
        it runs inside the transaction, so a holder that re-took the lease meanwhile is judged, not a stale
        copy. `breaker` has pid, host and user. Returns the lease_breaks row, or None when there was no lease."""
        with self.transaction():
            rows = self._query("SELECT * FROM run_leases WHERE run_id = ?", (run_id,))
            if not rows:
                return None
            held = rows[0]
            record = {
                "run_id": run_id, "broken_utc": utc_now(), "holder_pid": held["pid"], "holder_host": held["host"],
                "holder_process_start": held["process_start"], "holder_acquired_utc": held["acquired_utc"],
                "holder_state": state_of(held), "by_pid": breaker["pid"], "by_host": breaker["host"],
                "by_user": breaker.get("user"), "command_line": command_line,
            }
            record["id"] = self.db["lease_breaks"].insert(record).last_pk
            self.db.execute("DELETE FROM run_leases WHERE run_id = ?", (run_id,))
        return record

    def lease_breaks(self, run_id: str) -> list[dict[str, Any]]:
        """The recorded lease breaks of a run, oldest first."""
        return self._query("SELECT * FROM lease_breaks WHERE run_id = ? ORDER BY id", (run_id,))
