"""Every schema step is registered by store_schema itself: a process that imports only esr_local.doctor
(never esr_local.store) knows the same latest migration as a Store."""

from __future__ import annotations

import subprocess
import sys

from esr_local.store import Store
from esr_local.store_schema import MIGRATIONS


def test_the_doctor_alone_knows_every_migration(tmp_path):
    db = tmp_path / "fresh.db"
    with Store(db):
        pass
    code = ("import json, sys; from esr_local.doctor import database_status; "
            "assert 'esr_local.store' not in sys.modules; "
            f"print(json.dumps(database_status({str(db)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import json

    status = json.loads(out.stdout)
    names = [m.name for m in MIGRATIONS._migrations]
    assert names[-3:] == ["m014_unflagged_metric_view", "m015_lease_breaks", "m016_trace_regions_located"]
    assert (status["latest_known"], status["schema_version"], status["pending"]) == (names[-1], names[-1], [])


def test_any_import_order_registers_the_steps_in_order():
    names = [m.name for m in MIGRATIONS._migrations]
    for first in ("store_schema_traces", "store_migrations", "store_migrations_traces", "store_schema"):
        code = (f"import esr_local.{first}; from esr_local.store_schema import MIGRATIONS; "
                "print(','.join(m.name for m in MIGRATIONS._migrations))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip().split(",") == names, (first, out.stdout, out.stderr)
