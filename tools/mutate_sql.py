"""Mutation testing of the store's metric views: the SQL mutmut never reaches.

The views' SQL lives in strings inside decorated migration steps, so mutmut leaves it alone. This tool
builds a fresh database with the project's migrations (`esr_local.store.Store` on a temp file), reads
each view's final `CREATE VIEW` text from `sqlite_master`, makes one-token mutants of it with a fixed
operator set (below), and runs the selected tests once per mutant in a fresh pytest process with
`ESR_LOCAL_SQL_MUTANT=<mutant.json>`: tests/conftest.py then makes every `Store` it opens replace that
view by the mutant (DROP VIEW + CREATE VIEW). Verdicts: killed (a test failed or errored), survived (all
passed), timeout, crashed (killed by a signal); `invalid` mutants (SQLite refuses the mutated view on a
fresh database) are listed but not counted.

Operators: `>`<->`>=`, `<`<->`<=`, `=`->`!=`, `!=`/`<>`->`=`; AND<->OR; IS NULL<->IS NOT NULL; MIN<->MAX;
SUM->AVG; COUNT(x)->COUNT(*); numeric literals 0<->1, n->n+1; `+`<->`-`; `*`<->`/` (arithmetic only);
DISTINCT dropped; one WHERE/ON/HAVING conjunct dropped; a CASE WHEN's THEN and ELSE values swapped (a
missing ELSE is NULL); COALESCE(a, b)->a. String literals and identifiers are never changed.

    .venv/bin/python tools/mutate_sql.py                 # list, then run every mutant
    .venv/bin/python tools/mutate_sql.py --list          # only list the mutants
    .venv/bin/python tools/mutate_sql.py --view run_metrics --only run_metrics-007
    .venv/bin/python tools/mutate_sql.py --report [--show]   # tally mutants/sql/results.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "mutants" / "sql"
# In-process tests that read the views through a Store (grep the view names in tests/ to extend).
SELECTION = [
    "tests/test_guard_view_sql.py",
    "tests/test_metrics.py",
    "tests/test_unflagged_view.py",
]
TIMEOUT_S = 120

_TOKEN = re.compile(r"""
    (?P<ws>\s+|--[^\n]*)
  | (?P<str>'(?:[^']|'')*')
  | (?P<qid>"(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\])
  | (?P<num>\d+(?:\.\d*)?|\.\d+)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><>|!=|>=|<=|==|\|\||[=<>+\-*/%])
  | (?P<punct>[(),.;])
""", re.VERBOSE)


@dataclass(frozen=True)
class Tok:
    kind: str
    text: str
    start: int
    end: int

    @property
    def up(self) -> str:
        return self.text.upper() if self.kind == "word" else self.text


@dataclass(frozen=True)
class Mutant:
    id: str
    view: str
    description: str
    sql: str


def tokenize(sql: str) -> list[Tok]:
    """The SQL's tokens, whitespace and comments left out."""
    out, pos = [], 0
    while pos < len(sql):
        m = _TOKEN.match(sql, pos)
        if not m:
            raise ValueError(f"cannot tokenize SQL at {pos}: {sql[pos:pos + 30]!r}")
        if m.lastgroup != "ws":
            out.append(Tok(m.lastgroup, m.group(), m.start(), m.end()))
        pos = m.end()
    return out


def _matching(toks: list[Tok], i: int, opener: str, closer: str) -> int:
    """Index of the `closer` matching the `opener` at toks[i] (nested pairs skipped)."""
    depth = 0
    for j in range(i, len(toks)):
        depth += toks[j].up == opener
        depth -= toks[j].up == closer
        if depth == 0:
            return j
    raise ValueError(f"{opener} without a matching {closer}")


def _close(toks: list[Tok], i: int) -> int:
    """Index of the `)` matching the `(` at toks[i]."""
    return _matching(toks, i, "(", ")")


def _split_top(toks: list[Tok], lo: int, hi: int, sep: str) -> list[tuple[int, int]]:
    """[lo, hi) split at `sep` tokens outside parentheses and CASE...END: (start, end) index pairs."""
    parts, depth, case, start = [], 0, 0, lo
    for j in range(lo, hi):
        t = toks[j].up
        depth += t == "("
        depth -= t == ")"
        case += t == "CASE"
        case -= t == "END"
        if depth == 0 and case == 0 and t == sep:
            parts.append((start, j))
            start = j + 1
    parts.append((start, hi))
    return parts


_CLAUSE_END = {"GROUP", "ORDER", "LIMIT", "JOIN", "LEFT", "INNER", "CROSS", "WHERE", "HAVING", "UNION", "WINDOW"}


def _clause_end(toks: list[Tok], i: int) -> int:
    """End (exclusive) of the WHERE/ON/HAVING condition starting at toks[i]."""
    depth = 0
    for j in range(i, len(toks)):
        t = toks[j].up
        if t == "(":
            depth += 1
        elif t == ")":
            if depth == 0:
                return j
            depth -= 1
        elif depth == 0 and (t in _CLAUSE_END or t == ";"):
            return j
    return len(toks)


def _case_end(toks: list[Tok], i: int) -> int:
    """Index of the END closing the CASE at toks[i]."""
    return _matching(toks, i, "CASE", "END")


def _bump(text: str) -> str:
    if text == "0":
        return "1"
    if text == "1":
        return "0"
    if "." in text:
        return repr(float(text) + 1.0)
    return str(int(text) + 1)


def mutations(sql: str) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """(description, edits) per mutant; an edit replaces sql[start:end] by its text."""
    toks = tokenize(sql)
    out: list[tuple[str, list[tuple[int, int, str]]]] = []

    def one(i: int, new: str, what: str | None = None) -> None:
        t = toks[i]
        out.append((what or f"{t.text!r} -> {new!r} at {t.start}", [(t.start, t.end, new)]))

    swaps = {">": ">=", ">=": ">", "<": "<=", "<=": "<", "=": "!=", "==": "!=", "!=": "=", "<>": "=",
             "+": "-", "-": "+", "/": "*"}
    for i, t in enumerate(toks):
        prev = toks[i - 1].up if i else ""
        nxt = toks[i + 1].up if i + 1 < len(toks) else ""
        if t.kind == "op" and t.text in swaps:
            one(i, swaps[t.text])
        elif t.kind == "op" and t.text == "*" and prev not in ("(", ".", "SELECT", ",", "DISTINCT"):
            one(i, "/")
        elif t.kind == "num":
            one(i, _bump(t.text))
        elif t.kind == "word":
            u = t.up
            if u in ("AND", "OR") and prev != "BETWEEN":
                one(i, "OR" if u == "AND" else "AND")
            elif u in ("MIN", "MAX") and nxt == "(":
                one(i, "MAX" if u == "MIN" else "MIN")
            elif u == "SUM" and nxt == "(":
                one(i, "AVG")
            elif u == "COUNT" and nxt == "(" and toks[i + 2].text != "*":
                j = _close(toks, i + 1)
                out.append((f"COUNT(...) -> COUNT(*) at {t.start}", [(toks[i + 1].start, toks[j].end, "(*)")]))
            elif u == "IS" and nxt == "NULL":
                one(i, "IS NOT", f"IS NULL -> IS NOT NULL at {t.start}")
            elif u == "IS" and nxt == "NOT" and toks[i + 2].up == "NULL":
                out.append((f"IS NOT NULL -> IS NULL at {t.start}", [(t.start, toks[i + 1].end, "IS")]))
            elif u == "DISTINCT":
                one(i, "", f"DISTINCT dropped at {t.start}")
            elif u in ("WHERE", "ON", "HAVING"):
                hi = _clause_end(toks, i + 1)
                parts = _split_top(toks, i + 1, hi, "AND")
                if len(parts) > 1:
                    for k, (a, b) in enumerate(parts):
                        # drop the conjunct with the AND after it (the last one: with the AND before it)
                        s = toks[a].start if k < len(parts) - 1 else toks[a - 1].start
                        e = toks[b].end if k < len(parts) - 1 else toks[b - 1].end
                        out.append((f"{u} conjunct {k + 1} of {len(parts)} dropped at {toks[a].start}",
                                    [(s, e, "")]))
            elif u == "CASE" and nxt == "WHEN":
                end = _case_end(toks, i)
                # only simple CASE WHEN c THEN a [ELSE b] END (one WHEN at this level)
                top = [j for j in range(i + 1, end) if toks[j].up in ("WHEN", "THEN", "ELSE")
                       and _depth_ok(toks, i + 1, j)]
                kinds = [toks[j].up for j in top]
                if kinds[:2] == ["WHEN", "THEN"] and kinds.count("WHEN") == 1:
                    then_j = top[1]
                    else_j = top[2] if len(top) > 2 else None
                    a = sql[toks[then_j + 1].start:toks[(else_j or end) - 1].end]
                    b = sql[toks[else_j + 1].start:toks[end - 1].end] if else_j else "NULL"
                    tail = f"THEN {b} ELSE {a} "
                    out.append((f"CASE branch values swapped at {t.start}",
                                [(toks[then_j].start, toks[end].start, tail)]))
            elif u == "COALESCE" and nxt == "(":
                j = _close(toks, i + 1)
                args = _split_top(toks, i + 2, j, ",")
                a0, a1 = args[0]
                out.append((f"COALESCE(a, ...) -> a at {t.start}",
                            [(t.start, toks[j].end, "(" + sql[toks[a0].start:toks[a1 - 1].end] + ")")]))
    return out


def _depth_ok(toks: list[Tok], lo: int, j: int) -> bool:
    """toks[j] is at the top level of the CASE starting before lo (no open parenthesis or nested CASE)."""
    depth = case = 0
    for k in range(lo, j):
        t = toks[k].up
        depth += t == "("
        depth -= t == ")"
        case += t == "CASE"
        case -= t == "END"
    return depth == 0 and case == 0


def apply(sql: str, edits: list[tuple[int, int, str]]) -> str:
    for start, end, new in sorted(edits, reverse=True):
        sql = sql[:start] + new + sql[end:]
    return sql


def view_sql() -> dict[str, str]:
    """Every view's final CREATE VIEW text, from a database migrated by the project's own Store."""
    sys.path.insert(0, str(ROOT))
    from esr_local.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        with Store(Path(tmp) / "fresh.db") as store:
            return {r["name"]: r["sql"] for r in
                    store.db.query("SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY name")}


def all_mutants(views: list[str] | None = None) -> tuple[list[Mutant], list[Mutant]]:
    """(valid, invalid) mutants of the chosen views (all by default)."""
    sqls = view_sql()
    valid, invalid = [], []
    with tempfile.TemporaryDirectory() as tmp:
        from esr_local.store import Store

        with Store(Path(tmp) / "check.db") as store:
            con = store.db.conn
            for view, sql in sqls.items():
                if views and view not in views:
                    continue
                for k, (what, edits) in enumerate(mutations(sql)):
                    m = Mutant(f"{view}-{k:03d}", view, what, apply(sql, edits))
                    try:
                        con.execute("SAVEPOINT m")
                        con.execute(f'DROP VIEW "{view}"')
                        con.execute(m.sql)
                        con.execute(f'SELECT * FROM "{view}" LIMIT 0').fetchall()
                        valid.append(m)
                    except sqlite3.Error:
                        invalid.append(m)
                    finally:
                        con.execute("ROLLBACK TO m")
                        con.execute("RELEASE m")
    return valid, invalid


def run_one(m: Mutant, selection: list[str], timeout: int) -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{m.id}.json"
    path.write_text(json.dumps({"view": m.view, "sql": m.sql, "description": m.description}))
    env = dict(os.environ, ESR_LOCAL_SQL_MUTANT=str(path), ESR_LOCAL_THREADS="1")
    cmd = ["nice", "-n", "10", sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *selection]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc = p.returncode
        verdict = "survived" if rc == 0 else ("crashed" if rc < 0 else "killed")
        tail = (p.stdout + p.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        verdict, rc, tail = "timeout", None, ""
    return {"id": m.id, "view": m.view, "description": m.description, "verdict": verdict, "rc": rc,
            "seconds": round(time.monotonic() - t0, 1), "tail": tail if verdict == "survived" else tail[-600:]}


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


def report(show: bool) -> None:
    data = json.loads((OUT / "results.json").read_text())
    print(f"commit {data['commit']} (tree dirty: {data['dirty']}), {data['date']}, selection: "
          f"{' '.join(data['selection'])}")
    print(f"{'view':32} {'killed':>6} {'surv':>5} {'tmout':>5} {'crash':>5} {'invalid':>7} {'killed %':>8}")
    views = sorted({r["view"] for r in data["results"]} | {r["view"] for r in data["invalid"]})
    for v in views:
        rs = [r for r in data["results"] if r["view"] == v]
        c = {k: sum(r["verdict"] == k for r in rs) for k in ("killed", "survived", "timeout", "crashed")}
        inv = sum(r["view"] == v for r in data["invalid"])
        pct = 100 * (len(rs) - c["survived"]) / len(rs) if rs else float("nan")
        print(f"{v:32} {c['killed']:6} {c['survived']:5} {c['timeout']:5} {c['crashed']:5} {inv:7} {pct:8.1f}")
    if show:
        import difflib

        originals = view_sql()
        for r in data["results"]:
            if r["verdict"] != "survived":
                continue
            print(f"SURVIVED {r['id']}: {r['description']}")
            mutated = json.loads((OUT / f"{r['id']}.json").read_text())["sql"]
            for line in difflib.unified_diff(originals[r["view"]].splitlines(), mutated.splitlines(), n=0,
                                             lineterm=""):
                if line[:1] in "+-" and line[:3] not in ("+++", "---"):
                    print("   ", line.strip() if len(line) < 160 else line[:160])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--view", action="append", help="only this view (repeatable)")
    ap.add_argument("--only", action="append", help="only this mutant id (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the mutants and stop")
    ap.add_argument("--report", action="store_true", help="tally mutants/sql/results.json")
    ap.add_argument("--show", action="store_true", help="with --report: list the survivors")
    ap.add_argument("--confirm", action="store_true", help="re-run only the last run's survivors")
    ap.add_argument("--timeout", type=int, default=TIMEOUT_S, help="seconds per mutant")
    ap.add_argument("tests", nargs="*", help="test selection (default: %s)" % " ".join(SELECTION))
    a = ap.parse_args()
    if a.report:
        report(a.show)
        return
    valid, invalid = all_mutants(a.view)
    if a.only:
        valid = [m for m in valid if m.id in a.only]
    if a.confirm:
        last = json.loads((OUT / "results.json").read_text())
        keep = {r["id"] for r in last["results"] if r["verdict"] == "survived"}
        valid = [m for m in valid if m.id in keep]
    if a.list:
        for m in valid:
            print(m.id, m.description)
        for m in invalid:
            print(m.id, "INVALID", m.description)
        return
    selection = a.tests or SELECTION
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "esr_local", "tests"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    base = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *selection],
                          cwd=ROOT, env=dict(os.environ, ESR_LOCAL_THREADS="1"), capture_output=True, text=True)
    if base.returncode != 0:
        sys.exit("the selection fails without a mutant:\n" + (base.stdout + base.stderr)[-3000:])
    results, commit = [], _commit()
    name = "confirm.json" if a.confirm else ("partial.json" if (a.view or a.only) else "results.json")
    for k, m in enumerate(valid, 1):
        r = run_one(m, selection, a.timeout)
        results.append(r)
        print(f"[{k}/{len(valid)}] {r['verdict']:8} {r['seconds']:6.1f}s {m.id} {m.description}", flush=True)
        (OUT / name).write_text(json.dumps({
            "commit": commit, "dirty": dirty, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "selection": selection, "results": results,
            "invalid": [{"id": i.id, "view": i.view, "description": i.description} for i in invalid]}, indent=1))
    if name == "results.json":
        report(show=True)


if __name__ == "__main__":
    main()
