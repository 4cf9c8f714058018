"""Who is executing a run: the holder of a run's lease (pid, host, process start) and whether it lives."""

from __future__ import annotations

import os
import socket
from typing import Any


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (field 22 of /proc/PID/stat), None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # fields after "(comm)" start at field 3 (the state)
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has finished


def this_process() -> dict[str, Any]:
    """The lease holder record of the current process."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "process_start": _process_start(pid)}


def holder_alive(holder: dict[str, Any]) -> bool:
    """Whether a lease holder still runs. A holder on another host cannot be checked and counts as alive."""
    if holder["host"] != socket.gethostname():
        return True
    pid = int(holder["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    start, now = holder.get("process_start"), _process_start(pid)
    if now is None:
        return not os.path.exists(f"/proc/{pid}")  # no /proc: trust kill(); a zombie: finished
    return start is None or now == start  # a reused pid has another start time
