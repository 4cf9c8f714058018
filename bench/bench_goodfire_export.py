"""Benchmark: open a 2 GB Goodfire-layout SAE and extract one latent's decoder direction.

Writes (once) a torch.save-compatible file shaped like Goodfire's Llama-3.1-8B SAE (d_model 4096,
d_sae 65536, float32: 1 GiB decoder with a known pattern + 1 GiB encoder left as a sparse zero hole),
then, in a FRESH Python process per measurement, times `load_sae` + `decoder_row` and records peak RSS
(`ru_maxrss`, and `VmHWM` from /proc/self/status) and bytes read (`/proc/self/io` rchar). The file is written
by a separate child too: Linux carries a parent's RSS into a child's `ru_maxrss` across fork+exec, so the
process that spawns the measurement must stay small. The "cold" run first evicts the file from the page
cache (`posix_fadvise(DONTNEED)`), so it includes disk reads; the "warm" run repeats with the cache hot.

    python bench/bench_goodfire_export.py                 # temp file, deleted afterwards
    python bench/bench_goodfire_export.py --path /tmp/gf.pth --keep

Targets: < 1 s and < 200 MB peak RSS for load + one row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from esr_local.saes.torch_zip import LazyTensor, write_state_dict  # noqa: E402

TARGET_S, TARGET_MB = 1.0, 200.0


def pattern(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Decoder value at (row, col): deterministic, cheap, and different for every nearby element."""
    return (((rows * 131 + cols * 7) % 1021) / 1021.0 - 0.5).astype(np.float32)


def write_file(path: Path, d_model: int, d_sae: int) -> float:
    """Write the Goodfire-layout file; returns seconds taken."""
    block = max(1, (16 << 20) // (4 * d_sae))  # ~16 MB of decoder rows per chunk

    def dec_chunks():
        cols = np.arange(d_sae, dtype=np.int64)[None, :]
        for r0 in range(0, d_model, block):
            rows = np.arange(r0, min(r0 + block, d_model), dtype=np.int64)[:, None]
            yield pattern(rows, cols)

    t0 = time.perf_counter()
    write_state_dict(
        path,
        {
            "encoder_linear.weight": LazyTensor((d_sae, d_model)),
            "encoder_linear.bias": LazyTensor((d_sae,)),
            "decoder_linear.weight": LazyTensor((d_model, d_sae), chunks=dec_chunks),
            "decoder_linear.bias": np.ones(d_model, np.float32),
        },
        archive_name="Llama-3.1-8B-Instruct-SAE-l19",
    )
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    return time.perf_counter() - t0


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (clean pages; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


_CHILD = r"""
import json, resource, sys, time
t_start = time.perf_counter()
import numpy as np
from esr_local.saes import load_sae
t_import = time.perf_counter()

def rchar():
    try:
        with open("/proc/self/io") as fh:
            return int(next(l for l in fh if l.startswith("rchar:")).split()[1])
    except OSError:
        return -1

def hwm_mb():
    try:
        with open("/proc/self/status") as fh:
            return int(next(l for l in fh if l.startswith("VmHWM:")).split()[1]) / 1024
    except OSError:
        return -1.0

rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r0 = rchar()
t0 = time.perf_counter()
sae = load_sae(sys.argv[1])
t1 = time.perf_counter()
row = sae.decoder_row(int(sys.argv[2]))
t2 = time.perf_counter()
norm = sae.row_norm(int(sys.argv[2]))
r1 = rchar()
print(json.dumps({
    "import_s": t_import - t_start, "load_s": t1 - t0, "row_s": t2 - t1,
    "rss_before_mb": rss_before / 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "hwm_mb": hwm_mb(), "bytes_read": r1 - r0, "d_model": sae.d_model, "d_sae": sae.d_sae, "layer": sae.info.layer,
    "norm": norm, "row": row.tolist(),
}))
"""


def _run_child(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)


def measure(path: Path, latent: int) -> dict:
    out = _run_child(["-c", _CHILD, str(path), str(latent)])
    if out.returncode != 0:
        raise SystemExit(f"measurement failed:\n{out.stderr}")
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", type=Path, help="where to write (or reuse) the file; default: a temp dir")
    ap.add_argument("--keep", action="store_true", help="keep the file afterwards")
    ap.add_argument("--latent", type=int, default=40_000)
    ap.add_argument("--d-model", type=int, default=4096)
    ap.add_argument("--d-sae", type=int, default=65536)
    ap.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)  # internal: the writer child
    args = ap.parse_args(argv)
    if args.write_only:
        print(f"{write_file(args.path, args.d_model, args.d_sae):.1f}")
        return 0

    tmpdir = None
    if args.path is None:
        tmpdir = tempfile.mkdtemp(prefix="esr-bench-")
        path = Path(tmpdir) / "Llama-3.1-8B-Instruct-SAE-l19.pth"
    else:
        path = args.path
    expected_size = 2 * args.d_model * args.d_sae * 4
    try:
        if path.exists() and path.stat().st_size >= expected_size:
            print(f"reusing {path} ({path.stat().st_size / 1e9:.2f} GB)")
        else:
            out = _run_child([__file__, "--write-only", "--path", str(path), "--d-model", str(args.d_model),
                              "--d-sae", str(args.d_sae)])
            if out.returncode != 0:
                raise SystemExit(f"writing failed:\n{out.stderr}")
            secs = float(out.stdout.strip())
            print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB apparent, "
                  f"{path.stat().st_blocks * 512 / 1e9:.2f} GB on disk) in {secs:.1f} s")
        evict(path)
        results = {"cold": measure(path, args.latent), "warm": measure(path, args.latent)}
        want = pattern(np.arange(args.d_model, dtype=np.int64), np.int64(args.latent))
        print()
        print(f"{'run':<6}{'load s':>9}{'row s':>9}{'total s':>9}{'maxrss MB':>11}{'VmHWM MB':>10}"
              f"{'before MB':>11}{'read KB':>9}  ok")
        ok_all = True
        for name, r in results.items():
            total = r["load_s"] + r["row_s"]
            correct = np.array_equal(np.array(r["row"], np.float32), want) and r["layer"] == 19
            ok = correct and total < TARGET_S and r["peak_rss_mb"] < TARGET_MB
            ok_all &= ok
            print(f"{name:<6}{r['load_s']:>9.3f}{r['row_s']:>9.3f}{total:>9.3f}{r['peak_rss_mb']:>11.1f}"
                  f"{r['hwm_mb']:>10.1f}{r['rss_before_mb']:>11.1f}{r['bytes_read'] / 1024:>9.1f}  {'yes' if ok else 'NO'}")
        print(f"\n(import of numpy + esr_local.saes: {results['cold']['import_s']:.2f} s, not counted; 'before' = maxrss after imports; "
              f"targets: < {TARGET_S} s and < {TARGET_MB:.0f} MB; row {args.latent} checked against the written pattern)")
        return 0 if ok_all else 1
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
            if tmpdir:
                os.rmdir(tmpdir)


if __name__ == "__main__":
    raise SystemExit(main())
