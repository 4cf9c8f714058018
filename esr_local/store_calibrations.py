"""Cached calibrations (`calibrations`), keyed by what a calibrated boost depends on. Mixed into
`esr_local.store.Store`, which provides `db`, `transaction()` and `_query()`."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .errors import UserInputError
from .store_values import CALIBRATION_KEY_COLUMNS, column_value, to_json, utc_now


class CalibrationRecords:
    """The `calibrations` table."""

    @staticmethod
    def _calibration_key(key: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in CALIBRATION_KEY_COLUMNS if key.get(k) is None]
        if missing:
            raise UserInputError(f"a calibration key needs {', '.join(missing)}")
        return {k: column_value(key[k]) for k in CALIBRATION_KEY_COLUMNS}

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
            "steps_json": to_json(steps),
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
