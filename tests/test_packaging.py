"""A non-editable install (a built wheel) carries the catalog, the shipped dictionary and the data files,
and finds them from outside the checkout."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_install_finds_catalog_dictionary_and_prompts(tmp_path):
    whl_dir, target = tmp_path / "whl", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(whl_dir)],
                   check=True, cwd=tmp_path, timeout=600, capture_output=True)
    (wheel,) = whl_dir.glob("esr_local-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300, capture_output=True)
    code = (
        "import esr_local, esr_local.paths as p\n"
        "from esr_local.catalog import load_catalog, get_entry\n"
        "from esr_local.steering import open_sae\n"
        "from esr_local.prompts import load_prompts, load_meta_prompts\n"
        f"assert esr_local.__file__.startswith({str(target)!r}), esr_local.__file__\n"
        "assert len(load_catalog()) >= 8\n"
        "from esr_local.judge.catalog import load_judge_catalog\n"
        "assert 'qwen2.5-7b-instruct' in load_judge_catalog()\n"
        "sae = open_sae(None, get_entry('smollm2-135m-instruct'))\n"
        "print(sae.d_sae, sae.info.layer, len(load_prompts().prompts), sorted(load_meta_prompts())[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["38", "12", "40", "dont_get_distracted"]
