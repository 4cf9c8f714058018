"""Who is executing a run: the holder of a run's lease (pid, host, process start), whether it lives, and
breaking a lease whose holder is gone (a dead process here, or a process on another host that cannot be
checked from here and so never expires on its own)."""

from __future__ import annotations

import getpass
import os
import socket
from typing import TYPE_CHECKING, Any

from .errors import LeaseLiveError

if TYPE_CHECKING:
    from .store import Store


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


def breaker() -> dict[str, Any]:
    """The current process as the one breaking a lease: pid, host and user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        user = None
    return {**this_process(), "user": user}


def _holder_state(held: dict[str, Any]) -> str:
    """Why a lease may be broken: its holder is 'dead' (checked on this host) or 'unverifiable' (another
    host). A live holder on this host refuses the break."""
    if held["host"] != socket.gethostname():
        return "unverifiable"
    if holder_alive(held):
        raise LeaseLiveError(
            f"run {held['run_id']} is being executed by process {held['pid']} on this machine, which still runs "
            f"(since {held['acquired_utc']}); stop it first (kill {held['pid']}) or wait for it to finish: "
            "--break-lease only takes a lease from a process that is gone")
    return "dead"


def break_lease(store: Store, run_id: str, *, command_line: str | None = None) -> dict[str, Any] | None:
    """Take a run's lease from its holder so this process can execute the run, and record the break.

    Refused (LeaseLiveError) while the holder is alive on this host; a dead holder here, or any holder on
    another host (whose process cannot be checked from here), loses it. Returns the `lease_breaks` row, or
    None when the run held no lease."""
    run_id = store.get_run(run_id)["id"]
    return store.break_lease(run_id, breaker(), state_of=_holder_state, command_line=command_line)
