"""`esr-local doctor`: what this installation has (llama.cpp build, models, caches, database, judge check)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from esr_local.doctor import diagnose

from .options import db_option, json_option


def _yes(flag: Any) -> str:
    return "yes" if flag else "no"


def format_report(d: dict[str, Any]) -> str:
    """The diagnosis as short text sections."""
    lines = [f"esr-local {d['esr_local']}   data dir {d['data_dir']}" + ("   (offline)" if d["offline"] else "")]
    ll = d["llama_cpp"]
    if not ll.get("installed"):
        lines.append(f"llama.cpp: {ll['error']}")
    else:
        lines += [f"llama.cpp: llama-cpp-python {ll['version']}; backends {', '.join(ll['backends'])}; "
                  f"GPU offload {_yes(ll['supports_gpu_offload'])}, RPC {_yes(ll['supports_rpc'])}",
                  f"  SIMD: {' '.join(ll['simd']) or '-'}"]
    lines.append(f"models (hub cache {d['hub_cache']}):")
    for m in d["models"]:
        where = m["path"] if isinstance(m["path"], str) else ", ".join(f"{q}: {p}" for q, p in (m["path"] or {}).items())
        lines.append(f"  {m['name']}: {'available ' + where if m['available'] else 'missing - ' + str(m.get('missing'))}")
        sae = m.get("sae")
        if sae:
            state = f"available {sae.get('path')}" if sae["available"] else sae.get("error") or "not cached"
            if sae.get("labels"):
                state += f"; labels {', '.join(sae['labels'])}"
            lines.append(f"    SAE {sae['source']}: {state}")
    for key, title in (("labels", "labels"), ("paper_assets", "paper assets")):
        files = d[key]
        lines.append(f"{title}: " + (", ".join(f"{f['path']} ({f['bytes']} B)" for f in files) if files else "none cached"))
    db = d["database"]
    if not db["exists"]:
        lines.append(f"database: {db['path']} (not created yet; {db.get('note')})")
    elif db.get("error"):
        lines.append(f"database: {db['path']}: {db['error']}")
    else:
        pending = f"; pending migrations {', '.join(db['pending'])} (applied on next open)" if db["pending"] else ""
        lines.append(f"database: {db['path']}; schema {db['schema_version']} ({db['applied']} migrations); "
                     f"{db['runs']} runs{pending}")
    jc = d["judge_check"]
    if jc is None:
        lines.append("judge check: none yet (esr-local judge check)")
    elif jc.get("error"):
        lines.append(f"judge check: {jc['file']}: {jc['error']}")
    else:
        judge = jc["judge"]
        name = ":".join(str(judge.get(k)) for k in ("backend", "model") if judge.get(k)) or jc.get("key")
        figures = ", ".join(f"{k} {v:.2f}" for k, v in sorted(jc["summary"].items())
                            if isinstance(v, float))
        lines.append(f"judge check: {name}: {'passed' if jc['passed'] else 'below the thresholds'}"
                     + (f" ({figures})" if figures else "") + f" [{jc['file']}]")
    return "\n".join(lines)


@click.command(name="doctor")
@click.option("--catalog", default=None, type=click.Path(), help="Extra catalog file or folder (also ESR_LOCAL_CATALOG).")
@db_option
@json_option
def doctor_command(catalog: str | None, db: Path | None, json_: bool) -> None:
    """Show the llama.cpp build (backends, SIMD flags), which catalog models and SAEs are on this machine,
    cached labels and paper assets, the database in use and its schema version, and the last judge check.
    Only looks: nothing is downloaded, created or migrated."""
    d = diagnose(db, catalog)
    click.echo(json.dumps(d, indent=2) if json_ else format_report(d))


commands: list[click.Command] = [doctor_command]
