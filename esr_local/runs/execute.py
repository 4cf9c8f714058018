"""Execute (or resume) a run from its stored spec: take the lease, calibrate, generate, judge, store.

Trials of one batch group are written in one transaction, so a killed run never leaves half a group; a
group with any trial left to do is decoded whole (with the same partners as in an uninterrupted run),
and only the missing trials are stored. A failed generation is generated again on resume; a failed
judgment is judged again from the stored response.
"""

from __future__ import annotations

import shlex
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from ..engine import SteeredModel, system_info
from ..errors import EsrError, UserInputError
from ..leases import holder_alive, this_process
from ..provenance import machine, versions
from ..steering import check_sae_fits
from ..store import DuplicateTrialError
from .boosts import resolve_boosts
from .conditions import sweep_levels
from .create import build_judge, plan_base
from .judge_pool import JudgePool
from .judging import judgment_record
from .plan import TrialSpec, groups, plan_trials
from .resources import check_model, open_run_sae
from .spec import RunSpec

RESUMABLE = ("esr", "replay", "calibrate")


class RunBusyError(UserInputError):
    """Another live process is executing this run."""


class LeaseLostError(EsrError):
    """This process's lease was broken (`--break-lease`) while it executed the run: it stops writing."""


@dataclass
class Progress:
    """Running counts for the progress line."""

    done: int = 0
    counted: int = 0
    multi: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, scores: list[float | None] | None) -> None:
        self.done += 1
        s = [x for x in (scores or []) if x is not None]
        if s:
            self.counted += 1
            self.multi += len(s) > 1

    def line(self, total: int) -> str:
        """`[12/40] ETA 03:10 | multi-attempt 1/12 (8.3%)`."""
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * (total - self.done) if self.done else 0
        rate = 100 * self.multi / self.counted if self.counted else 0.0
        return f"[{self.done}/{total}] ETA {int(eta // 60):02d}:{int(eta % 60):02d} | multi-attempt {self.multi}/{self.counted} ({rate:.1f}%)"


def load_spec(run: dict) -> RunSpec:
    """The stored spec of a run row; runs of older versions had none."""
    if run["experiment"] not in RESUMABLE:
        raise UserInputError(f"run {run['id']} is a {run['experiment']} run; only esr-local runs can be resumed")
    if not run.get("spec_json"):
        raise UserInputError(f"run {run['id']} was created by an older esr-local that did not store a run spec; "
                             "start a new run with the same options")
    return RunSpec.from_json(run["spec_json"])


def execute_run(store, run_id: str, *, judge=None, echo: Callable[[str], None] | None = None,
                progress: Callable[[str], None] | None = None, runtime: dict | None = None) -> dict:
    """Run (or continue) every missing trial of a run; returns the summary (also stored on the run).

    `runtime` (threads, gpu_layers) overrides, for this execution only, how the stored spec runs; None
    values keep the stored ones. An in-process judge keeps the GPU offload it was created with (it is part
    of its judge key, so another would fail the judge check)."""
    echo = echo or (lambda s: print(s, file=sys.stderr))
    progress = progress or echo
    run = store.get_run(run_id)
    run_id = run["id"]
    spec = load_spec(run)
    judge_gpu_layers = spec.runtime.get("gpu_layers")
    overrides = {k: v for k, v in (runtime or {}).items() if v is not None}
    if overrides:
        spec = replace(spec, runtime={**spec.runtime, **overrides})
    me = this_process()
    holder = store.take_lease(run_id, me, is_alive=holder_alive)
    if holder is not None:
        if judge is not None:
            judge.close()
        where = "this machine" if holder["host"] == socket.gethostname() else f"host {holder['host']}"
        gone = "" if where == "this machine" else (f"; if that process is gone, take the run over with "
                                                   f"`esr-local run --resume {run_id} --break-lease`")
        raise RunBusyError(f"run {run_id} is being executed by process {holder['pid']} on {where} "
                           f"(since {holder['acquired_utc']}); wait for it to finish or stop that process{gone}")
    try:
        store.record_session(run_id, command_line=shlex.join(sys.argv), versions=versions(),
                             system_info=system_info(), machine=machine())
        store.set_run_status(run_id, "started")
        try:
            summary = _Execution(store, run_id, spec, judge, echo, progress, judge_gpu_layers, me).run()
        except LeaseLostError:
            raise  # the run is the new holder's now: its status is not ours to set
        except KeyboardInterrupt:
            store.set_run_status(run_id, "cancelled", "interrupted (Ctrl-C); resume with --resume")
            raise
        except EsrError as exc:
            store.set_run_status(run_id, "error", str(exc))
            raise
        except Exception as exc:
            store.set_run_status(run_id, "error", f"{exc.__class__.__name__}: {exc}")
            raise
        store.set_run_summary(run_id, summary)
        failed = summary["failed_calibrations"] + summary["failed_generations"] + summary["failed_judgments"]
        status = "partial" if failed else "success"
        store.set_run_status(run_id, status, _failure_line(summary) if failed else None)
        summary["status"] = status
        return summary
    finally:
        store.release_lease(run_id, me)


def _failure_line(s: dict) -> str:
    return (f"{s['failed_calibrations']} failed calibration(s), {s['failed_generations']} failed generation(s), "
            f"{s['failed_judgments']} failed judgment(s); resume with --resume to retry them")


class _Execution:
    """One execution of a run: everything it needs, opened once."""

    def __init__(self, store, run_id: str, spec: RunSpec, judge, echo, progress, judge_gpu_layers=None, me=None):
        self.store, self.run_id, self.spec, self.judge = store, run_id, spec, judge
        self.echo, self.progress = echo, progress
        self.judge_gpu_layers = judge_gpu_layers
        self.me = me  # this process's lease (pid, host): checked in every write transaction

    def _check_lease(self) -> None:
        """Inside a write transaction: stop if another process broke this one's lease (`--break-lease`), so two
        processes never execute one run."""
        if self.me is None:
            return
        held = self.store.lease(self.run_id)
        if held is None or (held["pid"], held["host"]) != (self.me["pid"], self.me["host"]):
            who = f"process {held['pid']} on {held['host']}" if held else "no process"
            raise LeaseLostError(f"run {self.run_id} was taken over (its lease now names {who}, see lease_breaks); "
                                 "this process stopped without writing its last batch, which the new holder runs")

    def run(self) -> dict:
        spec = self.spec
        check_model(spec.model)
        sae, rows = open_run_sae(spec)
        lm = SteeredModel(spec.model.path, n_ctx=spec.n_ctx, n_seq=spec.parallel, n_threads=spec.runtime.get("threads"),
                          n_gpu_layers=spec.runtime.get("gpu_layers") or 0, chat_mode=spec.model.chat_mode,
                          chat_template=spec.model.chat_template)
        try:
            check_sae_fits(sae, lm.n_embd, spec.model.name)
            if spec.ablation:
                from ..ablation_runs import ablation_for_spec

                lm.set_ablation(ablation_for_spec(spec.ablation, sae))
            if self.judge is None:
                self.judge = build_judge(spec.judge, n_threads=spec.runtime.get("threads"),
                                         n_gpu_layers=self.judge_gpu_layers)
            from .spec import judge_key

            if judge_key(self.judge.describe()) != spec.judge.key:
                raise UserInputError(f"the judge {spec.judge.spec} is not the one this run was created with (its "
                                     "description changed, e.g. other weights or rubric); grade with the new judge via "
                                     "`esr-local judge RUN --judge SPEC` or start a new run")
            return self._run(lm, rows)
        finally:
            if self.judge is not None:
                self.judge.close()
            lm.close()

    def _run(self, lm: SteeredModel, rows: dict[int, np.ndarray]) -> dict:
        spec, store, run_id = self.spec, self.store, self.run_id
        res = resolve_boosts(store, run_id, spec, lm, self.judge, rows, self.echo, check_lease=self._check_lease)
        summary = {"run_id": run_id, "layer": spec.steering_layer, "latents": len(spec.latents),
                   "failed_calibrations": res.failed, "flagged_latents": res.flagged,
                   "failed_generations": 0, "failed_judgments": 0, "planned": 0, "ran": 0, "rejudged": 0}
        if not res.boosts:
            raise UserInputError("no latent has a boost (every calibration failed; see the latents table); "
                                 "fix the judge or pass --boost, then resume")
        if spec.experiment == "calibrate":
            summary["boosts"] = res.boosts
            return summary
        levels = list(store.get_run(run_id)["settings"].get("sweep_boost_levels") or [])
        if spec.sweep_levels and not levels:
            # Fixed once, then stored: a latent calibrated later (on resume) must not move them.
            levels = sweep_levels(list(res.boosts.values()), spec.sweep_levels)
            store.merge_run_settings(run_id, {"sweep_boost_levels": levels})
        if levels:
            self.echo(f"boost sweep levels: {', '.join(f'{x:g}' for x in levels)}")
        from .conditions import Condition

        labels = {latent: spec.label(latent) for latent in spec.latents}
        plan = plan_trials(plan_base(spec), [Condition.parse(c) for c in spec.conditions], labels, res.boosts,
                           levels, spec.meta_prompts)
        retried = store.delete_failed_trials(run_id)
        if retried:
            self.echo(f"{retried} failed generation(s) will run again")
        summary["rejudged"] = self._rejudge(labels)
        done = store.finished_trial_keys(run_id)
        pending = [t for t in plan if t.key not in done]
        self.echo(f"run {run_id}: {len(plan)} trials ({len(plan) - len(pending)} already done), "
                  f"{len(res.boosts)} latents at layer {spec.steering_layer}, judge {spec.judge.spec}")
        prog = Progress()
        # Judgments overlap the next groups' decoding (remote judges); groups are stored in plan order.
        with JudgePool.for_judge(self.judge) as pool:
            try:
                for group in groups(plan, spec.parallel):
                    todo = [t for t in group if t.key not in done]
                    if not todo:
                        continue
                    t0 = group[0]
                    lm.set_directions({spec.steering_layer: rows[t0.latent] * np.float32(t0.boost)} if t0.boost != 0 else None)
                    self._run_group(lm, group, todo, labels, prog, pool, len(pending))
            except Exception:
                pool.drain()  # store what was judged before the failure, as serial judging would have
                raise
            pool.drain()
        summary.update(planned=len(plan), ran=len(pending), **self._failures())
        return summary

    def _failures(self) -> dict:
        q = self.store.db.execute
        gen = q("SELECT COUNT(*) FROM trials WHERE run_id = ? AND error IS NOT NULL", (self.run_id,)).fetchone()[0]
        jud = q("SELECT COUNT(*) FROM trials t LEFT JOIN judgments j ON j.trial_id = t.id AND j.judge_key = ? "
                "WHERE t.run_id = ? AND t.error IS NULL AND (j.id IS NULL OR j.parse_status = 'error')",
                (self.spec.judge.key, self.run_id)).fetchone()[0]
        return {"failed_generations": gen, "failed_judgments": jud}

    def _rejudge(self, labels: dict[int, str]) -> int:
        """Judge again, from the stored responses, the trials whose judgment failed (or never happened)."""
        todo = self.store.trials_to_judge(self.run_id, self.spec.judge.key)
        if todo:
            self.echo(f"{len(todo)} failed judgment(s) will be judged again (responses kept)")
        for t in todo:
            rec, attempts = judgment_record(self.judge, self.spec.judge, t["prompt"], t["response"], labels[t["latent"]])
            with self.store.transaction():
                self._check_lease()
                self.store.record_judgment(t["id"], rec, attempts)
        return len(todo)

    def _run_group(self, lm: SteeredModel, group: list[TrialSpec], todo: list[TrialSpec], labels, prog: Progress,
                   pool: JudgePool, total: int) -> None:
        """Decode the whole group (trials that fit the context); hand the `todo` ones' judgments to the pool,
        which stores them together (in plan order) once all are judged."""
        max_tokens = self.spec.sampling.max_tokens
        errors = {t.key: lm.fit_error(t.prompt, max_tokens) for t in group}
        fits = [t for t in group if errors[t.key] is None]
        gens = {}
        if fits:
            try:
                if self.spec.prefill and fits[0].condition.startswith("prefill:"):
                    from ..prefill_runs import generate_prefilled

                    out = generate_prefilled(lm, self.spec, fits)
                else:
                    out = lm.generate_many([t.prompt for t in fits], self.spec.sampling, [t.seed for t in fits])
                gens = {t.key: g for t, g in zip(fits, out)}
            except EsrError as exc:
                errors.update({t.key: str(exc) for t in fits})
        trials, calls = [], []
        for t in todo:
            gen = gens.get(t.key)
            trial = {
                "run_id": self.run_id, "condition": t.condition, "latent": t.latent, "prompt_index": t.prompt_index,
                "replicate": t.replicate, "base_prompt": t.base_prompt, "prompt": t.prompt, "boost": t.boost,
                "seed": t.seed, "response": gen.text if gen else None,
                "prompt_tokens": gen.prompt_tokens if gen else None,
                "completion_tokens": gen.completion_tokens if gen else None,
                "stop_reason": gen.stop_reason if gen else None,
                "generation_ms": round(gen.prefill_ms + gen.generation_ms, 1) if gen else None,
                "error": None if gen else errors.get(t.key) or "not generated",
                "extra_json": {"parallel_sequences": len(fits), "prefill_ms": round(gen.prefill_ms, 1) if gen else None},
            }
            trials.append(trial)
            calls.append(partial(judgment_record, self.judge, self.spec.judge, t.prompt, gen.text, labels[t.latent])
                         if gen is not None else (lambda: (None, [])))
        pool.submit_group(calls, partial(self._store_group, trials, prog, total))
        pool.poll()  # store every group judged so far: a kill then loses only what is still being judged

    def _store_group(self, trials: list[dict], prog: Progress, total: int, judged: list[tuple]) -> None:
        """Write one group's trials with their judgments in one transaction (called in plan order)."""
        records = [(trial, rec, attempts) for trial, (rec, attempts) in zip(trials, judged)]
        try:
            with self.store.transaction():
                self._check_lease()
                for trial, rec, attempts in records:
                    self.store.record_trial(trial, rec, attempts)
        except DuplicateTrialError:
            pass  # another process recorded this group first; keep the first
        else:
            for _, rec, attempts in records:
                prog.add([a["score"] for a in attempts] if rec and rec["parse_status"] == "ok" else None)
        self.progress(prog.line(total))
