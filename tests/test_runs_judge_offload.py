"""The run's --gpu-layers reaches an in-process LLM judge (a 7B catalog judge must not be stuck on the CPU)."""

from __future__ import annotations

from esr_local.runs.create import RunOptions, build_judge


def test_gpu_layers_reach_the_local_judge(smollm2_path):
    judge = build_judge(RunOptions(judge=f"local:{smollm2_path}", gpu_layers=-1), n_threads=1, n_gpu_layers=-1)
    try:
        assert judge.n_gpu_layers == -1
    finally:
        judge.close()
    default = build_judge(RunOptions(judge=f"local:{smollm2_path}"), n_threads=1)
    try:
        assert default.n_gpu_layers == 0
    finally:
        default.close()
