"""Mutation testing of the protocol modules, one module at a time (`make mutate`; not in CI: it is slow).

Each module gets its own mutmut work folder `mutants/<name>/` holding esr_local/ and tests/ as committed
at HEAD (`git archive`, so half-saved edits in a shared tree cannot break the run; `--worktree` links the
working tree instead) and a pyproject.toml whose [tool.mutmut] section is the repository's, narrowed to that module's file (and, for
big files, to the functions that carry the protocol) and to the fast tests that cover it. mutmut then
copies the code into `mutants/<name>/mutants/`, maps tests to functions, and runs each mutant against the
tests that reach it. The per-module tally (killed / survived / timeout / other) is printed as a Markdown
table row for MUTATION.md, and survivors are listed with `mutmut show`. Every mutant mutmut reports as a
timeout is then run again alone in a fresh pytest process (`recheck_timeouts`), whose verdict replaces it.

    .venv/bin/python tools/mutate.py                 # every module below
    .venv/bin/python tools/mutate.py metrics parse   # some of them
    .venv/bin/python tools/mutate.py --report        # tally finished work folders again, run nothing
    .venv/bin/python tools/mutate.py --recheck-only sampling   # re-run a finished folder's timeouts only
    .venv/bin/python tools/mutate.py --confirm sampling        # after new tests: only the survivors, from HEAD
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "mutants"


@dataclass(frozen=True)
class Module:
    """One protocol module: the file mutmut mutates, optional function globs, and the tests that cover it."""

    name: str
    file: str
    tests: list[str]
    functions: list[str] = field(default_factory=list)  # mutant-name globs after "<module>.", e.g. "x_trial_seed__*"


MODULES: list[Module] = [
    Module("metrics", "esr_local/metrics.py", ["tests/test_metrics.py", "tests/test_guard_metrics.py"],
           ["x_trial_outcome__*", "x__rate__*", "x__mean__*", "x_compute_metrics__*", "x_trial_scores_from_row__*"]),
    Module("bisection", "esr_local/bisection.py", ["tests/test_bisection.py", "tests/test_guard_bisection.py"]),
    Module("parse", "esr_local/judge/parse.py", ["tests/test_judge_parse.py", "tests/test_guard_judge.py"]),
    Module("rubric", "esr_local/judge/rubric.py", ["tests/test_judge_parse.py", "tests/test_guard_rubric.py",
                                                      "tests/test_paper_assets.py"],
           ["xǁRubricǁ__post_init____*", "xǁRubricǁversion__*", "xǁRubricǁdescribe__*", "x_build_judge_messages__*",
            "x_resolve_rubric__*", "x_load_rubric_file__*"]),
    Module("layers", "esr_local/layers.py", ["tests/test_layers.py", "tests/test_guard_layers.py"]),
    Module("cvec", "esr_local/cvec.py", ["tests/test_guard_cvec.py", "tests/test_guard_layers.py"]),
    Module("prompt_draws", "esr_local/runs/plan.py", ["tests/test_guard_draws.py"],
           ["x_trial_seed__*", "x_choose_prompt_indices__*"]),
    Module("calibration", "esr_local/calibration.py", ["tests/test_guard_calibration.py"]),
    Module("sampling", "esr_local/sampling.py", ["tests/test_guard_sampling.py", "tests/test_guard_penalty.py"]),
    Module("decode_loop", "esr_local/engine.py", ["tests/test_guard_decode.py", "tests/test_guard_penalty.py",
                                                  "tests/test_engine.py"],
           ["xǁSteeredModelǁ_decode_loop__*", "xǁSteeredModelǁgenerate_many__*", "xǁSteeredModelǁset_directions__*"]),
    Module("sae_rows", "esr_local/saes/base.py", ["tests/test_saes.py", "tests/test_guard_sae_rows.py"],
           ["x_decoder_dims__*", "x_check_shapes__*", "x_layer_or_none__*", "x__as_index__*", "xǁSaeǁdecoder_row__*",
            "xǁSaeǁrow_norm__*", "xǁSaeǁlabel__*", "xǁSaeǁset_labels_path__*", "xǁSaeǁencode__*",
            "xǁSaeǁencode_blocks__*", "xǁSaeǁ_as_rows__*", "xǁLinearSaeǁ_decoder_row__*"]),
    # Only _metrics_view is mutated: mutmut 3 leaves decorated functions (every @MIGRATIONS() step) alone.
    # Every Store creation reaches it, so the selection is kept to the tests that check the views' numbers.
    Module("store_views", "esr_local/store_schema.py", ["tests/test_guard_store_views.py", "tests/test_metrics.py"]),
]

# mutmut's exit-code meanings (mutmut/stats.py), folded into the columns of MUTATION.md.
KILLED = {1, 3, 37}
SURVIVED = {0}
TIMEOUT = {36, -24, 24, 152, 255}
# The test process died of SIGSEGV / SIGABRT: llama.cpp was handed something broken, which the tests caught
# by crashing. Counted as killed, in its own column. (-9, SIGKILL, may be the machine's memory limit: "other".)
CRASHED = {-11, -6}


def _base_config() -> dict:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    return data["tool"]


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def _write_project(folder: Path, mod: Module) -> None:
    tool = _base_config()
    cfg = dict(tool.get("mutmut", {}))
    cfg["only_mutate"] = [mod.file]
    cfg["pytest_add_cli_args_test_selection"] = [t for t in mod.tests if (ROOT / t).exists()]
    lines = ["[tool.mutmut]"] + [f"{k} = {_toml_value(v)}" for k, v in cfg.items()]
    lines += ["", "[tool.pytest.ini_options]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in tool.get("pytest", {}).get("ini_options", {}).items()]
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n", "utf-8")


def _mutant_prefix(mod: Module) -> str:
    return mod.file[:-3].replace("/", ".") + "."


def _globs(mod: Module) -> list[str]:
    return [_mutant_prefix(mod) + g for g in mod.functions]


def _mutmut() -> str:
    return str(Path(sys.executable).with_name("mutmut"))


def _place_sources(folder: Path, worktree: bool) -> str:
    """esr_local/ and tests/ into the work folder; returns what they are (a commit or 'working tree')."""
    if worktree:
        for link in ("esr_local", "tests"):
            if not (folder / link).exists():
                (folder / link).symlink_to(ROOT / link, target_is_directory=True)
        return "working tree"
    if (folder / "esr_local").exists():
        # --keep reuses what was extracted before: the tally is of THAT code, so keep its recorded source
        marker = folder / "SOURCE"
        return marker.read_text("utf-8").strip() if marker.is_file() else "unknown (reused work folder)"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", "HEAD", "esr_local", "tests", "cli"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    # The Click layer installs as esr_local.cli (from the working tree's cli/); inside the work folder it
    # must be HEAD's too, or a test importing it would mix HEAD's library with the working tree's CLI.
    (folder / "cli").rename(folder / "esr_local" / "cli")
    return f"commit {commit}"


def run_module(mod: Module, max_children: int, fresh: bool, worktree: bool) -> int:
    folder = WORK / mod.name
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = _place_sources(folder, worktree)
    (folder / "SOURCE").write_text(f"{source}\n", "utf-8")  # what the tally below was measured on
    _write_project(folder, mod)
    env = dict(os.environ, ESR_LOCAL_THREADS=os.environ.get("ESR_LOCAL_THREADS", "1"))
    cmd = ["nice", "-n", "10", _mutmut(), "run", "--max-children", str(max_children), *_globs(mod)]
    print(f"== {mod.name} ({source}, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC): "
          f"{' '.join(cmd[3:])}  in {folder.relative_to(ROOT)}", flush=True)
    return subprocess.run(cmd, cwd=folder, env=env).returncode


def recheck_timeouts(mod: Module, timeout_s: float) -> None:
    """Run every mutant mutmut reported as a timeout again, alone, in a fresh pytest process.

    On the shared VM mutmut's fork server reported surviving mutants of model-backed modules as timeouts
    (their tests pass in seconds when run alone), which would count them as killed. The fresh run's exit
    code (0 survived, 1 killed; still over `timeout_s`: a real timeout) is kept in rechecked.json and
    replaces mutmut's in the tally.
    """
    folder = WORK / mod.name
    meta = folder / "mutants" / (mod.file + ".meta")
    if not meta.exists():
        return
    codes = json.loads(meta.read_text("utf-8"))["exit_code_by_key"]
    store = folder / "rechecked.json"
    done = json.loads(store.read_text("utf-8")) if store.exists() else {}
    tests = [t for t in mod.tests if (ROOT / t).exists()]
    for key in sorted(k for k, v in codes.items() if v in TIMEOUT and k not in done):
        env = dict(os.environ, MUTANT_UNDER_TEST=key, ESR_LOCAL_THREADS=os.environ.get("ESR_LOCAL_THREADS", "1"))
        cmd = ["nice", "-n", "10", sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               "-p", "no:randomly", *tests]
        try:
            rc = subprocess.run(cmd, cwd=folder / "mutants", env=env, capture_output=True,
                                timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = 36  # mutmut's "timeout"
        done[key] = rc
        store.write_text(json.dumps(done, indent=1, sort_keys=True) + "\n", "utf-8")
        print(f"recheck {key}: exit {rc}", flush=True)


def tally(mod: Module) -> dict | None:
    meta = WORK / mod.name / "mutants" / (mod.file + ".meta")
    if not meta.exists():
        return None
    codes = json.loads(meta.read_text("utf-8"))["exit_code_by_key"]
    rechecked = WORK / mod.name / "rechecked.json"
    if rechecked.exists():
        codes.update({k: v for k, v in json.loads(rechecked.read_text("utf-8")).items() if k in codes})
    if mod.functions:
        codes = {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, g) for g in _globs(mod))}
    if mod.name.endswith(".confirm"):  # only the survivors it was given were run
        codes = {k: v for k, v in codes.items() if v is not None}
    out = {"killed": 0, "survived": 0, "timeout": 0, "crashed": 0, "other": 0, "not_checked": 0, "survivors": []}
    for key, code in sorted(codes.items()):
        if code is None:
            out["not_checked"] += 1
        elif code in KILLED:
            out["killed"] += 1
        elif code in SURVIVED:
            out["survived"] += 1
            out["survivors"].append(key)
        elif code in TIMEOUT:
            out["timeout"] += 1
        elif code in CRASHED:
            out["crashed"] += 1
        else:
            out["other"] += 1
            out["survivors"].append(f"{key} (exit {code})")
    out["total"] = sum(out[k] for k in ("killed", "survived", "timeout", "crashed", "other"))  # checked mutants
    return out


def confirm_module(mod: Module) -> Module | None:
    """The module narrowed to the survivors of its last run, in its own work folder `<name>.confirm`.

    Run after adding tests for those survivors: a fresh folder from HEAD, mutmut on those mutants only.
    (Mutant names stay valid while the mutated file is unchanged since that run.)
    """
    t = tally(mod)
    keys = [k.split(" ")[0] for k in (t or {}).get("survivors", [])]  # "other" ones (with their exit code) too
    if not keys:
        return None
    prefix = _mutant_prefix(mod)
    return replace(mod, name=f"{mod.name}.confirm", functions=[k[len(prefix):] for k in keys])


def report(mods: list[Module], show: bool) -> None:
    print(f"\n| module | file | source | killed | survived | timeout | crashed | other | not checked | killed % |"
          f"  ({dt.date.today()})")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mod in mods:
        t = tally(mod)
        if t is None:
            print(f"| {mod.name} | `{mod.file}` | not run | | | | | | | |")
            continue
        pct = 100 * (t["killed"] + t["timeout"] + t["crashed"]) / t["total"] if t["total"] else 0.0
        marker = WORK / mod.name / "SOURCE"
        source = marker.read_text("utf-8").strip() if marker.exists() else "?"
        print(f"| {mod.name} | `{mod.file}` | {source} | {t['killed']} | {t['survived']} | {t['timeout']} "
              f"| {t['crashed']} | {t['other']} | {t['not_checked']} | {pct:.1f} |")
    if show:
        for mod in mods:
            t = tally(mod)
            for key in (t or {}).get("survivors", []):
                print(f"\n--- {mod.name}: {key}")
                subprocess.run([_mutmut(), "show", key.split(" ")[0]], cwd=WORK / mod.name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help=f"modules to run (default: all): {', '.join(m.name for m in MODULES)}")
    ap.add_argument("--report", action="store_true", help="only tally finished work folders")
    ap.add_argument("--show", action="store_true", help="print the diff of every survivor")
    ap.add_argument("--keep", action="store_true", help="reuse the work folder (mutmut's cache) instead of starting fresh")
    ap.add_argument("--worktree", action="store_true", help="mutate the working tree instead of HEAD")
    ap.add_argument("--max-children", type=int, default=2)
    ap.add_argument("--recheck", type=float, default=900.0, metavar="SECONDS",
                    help="re-run each reported timeout alone with this limit (0: keep mutmut's verdict)")
    ap.add_argument("--recheck-only", action="store_true", help="only re-run the timeouts of finished work folders")
    ap.add_argument("--confirm", action="store_true",
                    help="run only the survivors of each module's last run again, from HEAD (in mutants/<name>.confirm)")
    args = ap.parse_args()
    known = {m.name: m for m in MODULES}
    unknown = [n for n in args.modules if n not in known]
    if unknown:
        ap.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(known)}")
    mods = [known[n] for n in args.modules] if args.modules else MODULES
    if args.confirm:
        mods = [c for c in (confirm_module(m) for m in mods) if c is not None]
    elif args.report:  # with the confirmation runs that exist
        mods = [x for m in mods for x in (m, replace(m, name=f"{m.name}.confirm")) if (WORK / x.name).exists()
                or x is m]
    rc = 0
    if not args.report and not args.recheck_only:
        for mod in mods:
            rc |= run_module(mod, args.max_children, fresh=not args.keep, worktree=args.worktree)
    if args.recheck > 0 and (not args.report or args.recheck_only):
        for mod in mods:
            recheck_timeouts(mod, args.recheck)
    report(mods, args.show)
    return rc


if __name__ == "__main__":
    sys.exit(main())
