"""`esr-local report`: the HTML report's numbers are the metrics' numbers, pooling follows the paper's rules,
the output is byte-identical for the same database, and the page renders in a real headless browser."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from esr_local.cli import main
from esr_local.store import Store
from report_fixtures import imported_store

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def imported(tmp_path):
    db, ids = imported_store(tmp_path)
    return db, ids


def _add_calibration(db: Path, run_id: str) -> None:
    """Give latent 1 of a run a stored calibration with three bisection steps and a flag."""
    with Store(db) as store:
        cal_id = store.put_calibration(
            {"model_sha256": "toy", "sae_source": "toy-sae", "latent": 1, "layer": 3, "judge": "toy-judge",
             "settings_hash": "h"},
            {"boost": 2.5, "achieved_score": 0.31, "target": 0.3,
             "steps": [{"boost": 4.0, "score": 0.9, "direction": -1, "confidence": 0.6},
                       {"boost": 2.0, "score": 0.1, "direction": 1, "confidence": 0.6},
                       {"boost": 2.6, "score": 0.35, "direction": -1, "confidence": 0.55}]})
        store.upsert_latent(run_id, 1, label="weddings", row_norm=None, boost=2.0, boost_source="calibrated",
                            calibration_id=cal_id, achieved_score=0.31, flags="boost at the upper bound")


def test_report_numbers_are_the_metrics_numbers_and_runs_of_one_model_pool(imported, tmp_path):
    db, ids = imported
    out = tmp_path / "report"
    code, stdout, _ = _cli("report", ids["steered"], ids["steered2"], ids["meta"], "--db", str(db), "-o", str(out), "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert summary["index"] == str(out / "index.html")
    numbers = json.loads((out / "report.json").read_text())
    code, metrics_out, _ = _cli("metrics", ids["steered"], ids["steered2"], ids["meta"], "--db", str(db), "--json")
    assert numbers["per_run"] == json.loads(metrics_out)
    (model,) = numbers["models"]
    assert model["model"] == "toy-model" and len(model["runs"]) == 3
    pooled = {m["condition"]: m for m in model["metrics"]}
    # steered pooled over two files: 4 + 2 counted (the judge error is not), 3 + 1 multi, 2 + 1 improved
    steered = pooled["steered"]
    assert (steered["n"], steered["multi_attempt_count"], steered["improved_count"]) == (6, 4, 3)
    assert steered["multi_attempt_rate"] == pytest.approx(400 / 6)
    assert steered["esr_rate"] == pytest.approx(50.0)
    assert steered["esr_rate_se"] == pytest.approx(100 * math.sqrt(0.25 / 6))
    assert steered["mean_first_score"] == pytest.approx((10 + 20 + 40 + 5 + 10 + 50) / 6)
    assert pooled["meta:self_monitor"]["n"] == 4 and pooled["meta:self_monitor"]["improved_count"] == 1
    page = (out / "index.html").read_text()
    assert "pooled over 3 runs" in page
    # paired meta vs steered on (latent, prompt, replicate): both files' steered trials count, first wins per key
    paired = re.search(r'<table id="paired">(.*?)</table>', page).group(1)
    assert "<td>meta:self_monitor</td><td>steered</td><td>4</td><td>-50.0 ± 50.0</td><td>-25.0 ± 47.9</td>" in paired


def test_same_database_gives_byte_identical_report(imported, tmp_path):
    db, ids = imported
    _add_calibration(db, ids["steered"])
    runs = [ids["steered"], ids["meta"], ids["sweep"]]
    for name in ("a", "b"):
        assert _cli("report", *runs, "--db", str(db), "-o", str(tmp_path / name))[0] == 0
    for file in ("index.html", "report.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    # self-contained: the only URLs in the page are the SVG/XLink namespace names (never fetched)
    page = (tmp_path / "a" / "index.html").read_text()
    assert set(re.findall(r"https?://[^\s\"'<>]*", page)) == {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    # giving the runs in another order (and by prefix) changes nothing either
    assert _cli("report", *[r[:20] for r in reversed(runs)], "--db", str(db), "-o", str(tmp_path / "c"))[0] == 0
    assert (tmp_path / "c" / "index.html").read_bytes() == (tmp_path / "a" / "index.html").read_bytes()
    # another process with another hash seed (set and dict orders) writes the same bytes

    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    code = "from esr_local.cli import main; main()"
    subprocess.run([sys.executable, "-c", code, "report", *runs, "--db", str(db), "-o", str(tmp_path / "d")],
                   env=env, check=True, capture_output=True, timeout=300)
    assert (tmp_path / "d" / "index.html").read_bytes() == (tmp_path / "a" / "index.html").read_bytes()


def test_sweep_points_are_in_sd_units_of_the_latent_boosts(imported):
    from esr_local.report.data import load_run, sweep_points

    db, ids = imported
    with Store(db, create=False) as store:
        points = sweep_points(load_run(store, ids["sweep"]))
    assert [(p["condition"], p["boost"], p["sigma"]) for p in points] == [
        ("sweep:0", 1.0, -3.0), ("sweep:1", 2.5, 0.0), ("sweep:2", 4.0, 3.0)]
    # latent 1 improves at levels 0 and 1 (10->50, 30->50), not at level 2 (50->50); latent 2 never splits
    assert [p["esr_rate"] for p in points] == [50.0, 50.0, 0.0]
    assert [p["multi_attempt_rate"] for p in points] == [50.0, 50.0, 50.0]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("ESR_LOCAL_NO_BROWSER"):  # set by `make test` (tools/ensure_chromium.sh) when it could not install one
        pytest.skip(os.environ["ESR_LOCAL_NO_BROWSER"])
    raise AssertionError("the report test needs a headless browser: install Debian's chromium "
                         "(`apt-get install chromium`; .ci/run does it)")


def test_report_renders_in_headless_chromium_with_figures_and_tables(imported, tmp_path):
    from PIL import Image

    db, ids = imported
    _add_calibration(db, ids["steered"])
    out = tmp_path / "report"
    assert _cli("report", ids["steered"], ids["steered2"], ids["meta"], ids["sweep"], "--db", str(db), "-o", str(out))[0] == 0
    browser = _chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (out / "index.html").as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    for fig in ("fig-rates", "fig-scores", "fig-sweep", "fig-meta", f"fig-calibration-{ids['steered']}"):
        assert re.search(rf'<figure id="{re.escape(fig)}"><svg', dom), fig
    assert f'id="fig-calibration-{ids["meta"]}-none"' in dom  # the meta run has no calibration to draw
    for table in ("metrics-model-0", "metrics-per-run", "paired", f"flagged-{ids['steered']}",
                  f"failures-{ids['steered2']}", f"provenance-{ids['sweep']}"):
        assert f'<table id="{table}"' in dom, table
    assert "boost at the upper bound" in dom and "no json" in dom  # the flag and the judge failure are listed
    assert dom.count('class="trial"') == 6 and 'class="attempt later"' in dom
    # self-contained: no scripts, and nothing the browser would fetch (only in-page #references and inline data: images)
    assert "<script" not in dom and "<link" not in dom
    refs = re.findall(r'(?:src|href)="([^"]*)"', dom)
    assert refs and all(ref.startswith(("#", "data:image/png;base64,")) for ref in refs)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    subprocess.run([browser, *flags, "--window-size=1200,3000", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 3000)
    histogram = image.histogram()
    non_white = sum(histogram[:200]) / (image.size[0] * image.size[1])
    assert non_white > 0.02, f"the screenshot is nearly blank ({non_white:.3%} dark pixels)"


def test_report_errors_are_one_line(imported, tmp_path):
    db, ids = imported
    code, _, err = _cli("report", "zzz", "--db", str(db), "-o", str(tmp_path / "r"))
    assert code == 1 and err.startswith("Error: no run 'zzz'") and err.count("\n") == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _cli("report", ids["meta"], "--db", str(db), "-o", str(blocker / "sub"))
    assert code == 1 and err.startswith("Error: cannot write ") and "is a file, not a folder" in err and err.count("\n") == 1
    code, _, err = _cli("report", ids["meta"], "--db", str(db), "-o", str(blocker))
    assert code == 2 and "is a file" in err and err.count("\n") == 1
    code, _, err = _cli("report", ids["meta"], "--db", str(tmp_path / "none.db"), "-o", str(tmp_path / "r"))
    assert code == 1 and "no esr-local database" in err and not (tmp_path / "none.db").exists()
    assert not (tmp_path / "r").exists()
    code, _, err = _cli("report", ids["meta"], "--db", str(db), "-o", "")  # not the current folder
    assert code == 2 and "'--output'" in err and "must not be empty" in err and err.count("\n") == 1


def test_missing_matplotlib_is_one_clear_line(imported, tmp_path):
    db, ids = imported
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from esr_local.cli import main\n"
            f"main(['report', {ids['meta']!r}, '--db', {str(db)!r}, '-o', {str(tmp_path / 'r')!r}])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "Error: esr-local report draws its figures with matplotlib, which is not installed; "
        "run `pip install 'esr-local[report]'` (or `pip install matplotlib`)"]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_report_of_a_real_run(real_run, tmp_path):
    """A real run (embedded SmolLM2, fixed boost, few tokens, the default offline judge after its full check;
    the session's shared `real_run`) through `run`, then its report."""
    db, run_id = real_run["db"], real_run["run_id"]
    (listed,) = json.loads(_cli("runs", "--db", str(db), "--json")[1])
    assert listed["id"] == run_id and listed["status"] == "success"
    out = tmp_path / "report"
    assert _cli("report", run_id, "--db", str(db), "-o", str(out))[0] == 0
    numbers = json.loads((out / "report.json").read_text())
    assert numbers["per_run"] == json.loads(_cli("metrics", run_id, "--db", str(db), "--json")[1])
    assert {m["condition"] for m in numbers["per_run"]} == {"steered", "baseline"}
    page = (out / "index.html").read_text()
    with Store(db, create=False) as store:
        run = store.get_run(run_id)
        trials = store.trials(run_id)
    assert len(trials) == 2  # one prompt, steered and baseline
    assert f"<td>{run['model_sha256']}</td>" in page  # provenance: the model file's hash
    assert all(t["judgment"] is not None and t["response"] for t in trials)
    counted = sum(m["n"] for m in numbers["per_run"])
    assert page.count('class="trial"') == min(6, counted)  # example trials are the counted ones
    assert '<figure id="fig-rates"><svg' in page
    # the default judge passed its check on the shipped cases, and the run recorded it
    check = json.loads(run["spec_json"])["judge"]["check"]
    assert check["status"] == "passed" and check["summary"]["n_cases"] == 48 and check["summary"]["passed"]
    assert all(check["summary"]["checks"].values())


def test_judge_and_exclude_flagged_mean_what_they_mean_for_metrics(imported, tmp_path):
    db, ids = imported
    run = ids["steered"]
    _add_calibration(db, run)  # flags latent 1
    with Store(db) as store:
        (first_key,) = [k["judge_key"] for k in store.judge_keys(run)]
        with store.transaction():  # an imported run names no judge; make the importer's its own
            store.db.execute("UPDATE runs SET judge_key = ? WHERE id = ?", (first_key, run))
        for trial in store.trials(run):  # a second judge that never splits
            store.record_judgment(trial["id"], {"judge_key": "second:judge", "parse_status": "ok"},
                                  [{"text": trial["response"], "score": 50.0}])
    for extra in (["--exclude-flagged"], ["--judge", "second:judge"]):
        out = tmp_path / "-".join(extra).strip("-")
        assert _cli("report", run, "--db", str(db), "-o", str(out), *extra)[0] == 0
        numbers = json.loads((out / "report.json").read_text())
        assert numbers["per_run"] == json.loads(_cli("metrics", run, "--db", str(db), "--json", *extra)[1])
        pooled = numbers["models"][0]["metrics"][0]
        if extra == ["--exclude-flagged"]:  # latent 2 only: both trials multi-attempt, one improved
            assert (pooled["n"], pooled["multi_attempt_count"], pooled["improved_count"]) == (2, 2, 1)
            assert "latent 1 (" not in (out / "index.html").read_text().split('id="examples"')[1]
        else:  # the second judge's single attempts: nothing multi-attempt
            assert (pooled["n"], pooled["multi_attempt_count"], pooled["mean_first_score"]) == (4, 0, 50.0)


def test_attempts_are_marked_in_the_full_response():
    from esr_local.report.html import marked_response

    trial = {"response": "Bake it <hot>. Wait, no: start over. Mix flour.",
             "attempts": [{"text": "Bake it <hot>.", "score": 10.0}, {"text": "paraphrased", "score": 20.0},
                          {"text": "Mix flour.", "score": 80.0}]}
    assert marked_response(trial) == (
        '<mark class="a0" title="attempt 1, score 10"><sup>[1: 10]</sup>Bake it &lt;hot&gt;.</mark>'
        " Wait, no: start over. "
        '<mark class="a1" title="attempt 3, score 80"><sup>[3: 80]</sup>Mix flour.</mark>')
