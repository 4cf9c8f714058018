"""A run steers labelled latents: an SAE without labels is refused unless --allow-unlabelled (recorded)."""

from __future__ import annotations

import json
import shutil

import pytest

from esr_local.errors import UserInputError
from esr_local.runs.create import RunOptions, create_run
from esr_local.steering import resolve_sae_source
from esr_local.store import Store


def _sae(tmp_path, keep_labels: bool, drop=()):
    folder = tmp_path / "sae"
    shutil.copytree(resolve_sae_source("shipped:smollm2-135m-concepts"), folder)
    labels = folder / "labels.csv"
    if not keep_labels:
        labels.unlink()
    elif drop:
        lines = labels.read_text().splitlines()
        kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) not in drop]
        labels.write_text("\n".join(kept) + "\n")
    return folder


OPTS = dict(boost=1.0, judge="local", skip_judge_check=True)


def test_unlabelled_latents_are_refused_unless_allowed_and_the_choice_is_recorded(tmp_path):
    folder = _sae(tmp_path, keep_labels=False)
    store = Store(tmp_path / "l.db")
    with pytest.raises(UserInputError, match=r"1 latent\(s\) have no label \(3\).*--allow-unlabelled"):
        create_run(store, RunOptions(sae=str(folder), latents=[3], **OPTS))
    assert store.db["runs"].count == 0  # nothing written for a refused run
    run_id, judge = create_run(store, RunOptions(sae=str(folder), latents=[3], allow_unlabelled=True, **OPTS))
    judge.close()
    spec = json.loads(store.get_run(run_id)["spec_json"])
    assert spec["latent_source"]["labels_check"] == {"unlabelled": [3], "allowed": True}
    assert spec["labels"]["3"] == "latent 3"


def test_drawn_latents_come_from_the_labelled_ones(tmp_path):
    folder = _sae(tmp_path, keep_labels=True, drop=set(range(0, 38, 2)))  # only odd latents keep a label
    store = Store(tmp_path / "l.db")
    run_id, judge = create_run(store, RunOptions(sae=str(folder), n_latents=6, seed=3, **OPTS))
    judge.close()
    spec = json.loads(store.get_run(run_id)["spec_json"])
    assert len(spec["latents"]) == 6 and all(i % 2 == 1 for i in spec["latents"])
    assert spec["latent_source"]["from"] == "labelled"
    assert spec["latent_source"]["labels_check"] == {"unlabelled": [], "allowed": False}
    with pytest.raises(UserInputError, match="exceeds the SAE's 19 labelled latents"):
        create_run(store, RunOptions(sae=str(folder), n_latents=20, seed=3, **OPTS))


def test_run_creation_validates_cheap_inputs_before_the_judge_check_and_refuses_a_weak_judge(tmp_path):
    from esr_local.judge import make_judge
    from esr_local.judge.check import THRESHOLDS, WeakJudgeError, save_check

    judge = make_judge("local", n_threads=1)
    try:  # a cached, failing check for this judge: what `judge check` would have stored
        save_check(judge, {"passed": False, **{k: 0.5 for k in THRESHOLDS}})
    finally:
        judge.close()
    store = Store(tmp_path / "l.db")
    opts = dict(boost=1.0, judge="local")
    with pytest.raises(UserInputError, match="latent 999 is out of range"):  # not the judge's verdict
        create_run(store, RunOptions(latents=[999], **opts))
    with pytest.raises(WeakJudgeError, match="misses the judge-check thresholds.*--allow-weak-judge"):
        create_run(store, RunOptions(latents=[1], **opts))
    assert store.db["runs"].count == 0
    run_id, judge = create_run(store, RunOptions(latents=[1], allow_weak_judge=True, **opts))
    judge.close()
    check = json.loads(store.get_run(run_id)["spec_json"])["judge"]["check"]
    assert check["status"] == "weak-allowed" and check["summary"]["passed"] is False
