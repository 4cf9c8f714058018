"""Seeded fuzzing of the four SAE formats and control-vector GGUF files, with a bounded budget.

Each mutation (bit flips, truncation, overwritten byte ranges, lying header fields) is opened the way the CLI
opens it and one decoder row is read (for GGUF: read and described). The only acceptable outcomes are a
loaded file or an EsrError. The loop runs in a child process whose address space is capped, so a file that
makes a reader allocate by a header's claim instead of the file's real size shows up as a MemoryError (or a
dead child), and an interpreter crash fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MUTATIONS_PER_FORMAT = 100
MEMORY_CAP_BYTES = 3 * 2**30  # far below what any lying header claims; well above what the readers need
FORMATS = ("saelens", "gemmascope2", "gemmascope_npz", "gemmascope_npz_compressed", "goodfire_pth", "control_vector")


# -- base files ---------------------------------------------------------------------------------------

def _build(kind: str, root: Path) -> tuple[Path, Path]:
    """(path to open, file to mutate) of a small valid file of `kind`."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    d_model, d_sae = 16, 6
    w_dec = rng.normal(size=(d_sae, d_model)).astype(np.float32)
    w_enc = np.ascontiguousarray(w_dec.T)
    folder = root / kind
    folder.mkdir()
    if kind == "saelens":
        save_file({"W_dec": w_dec, "W_enc": w_enc, "b_enc": np.zeros(d_sae, np.float32), "b_dec": np.zeros(d_model, np.float32)},
                  str(folder / "sae_weights.safetensors"))
        (folder / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": d_model, "d_sae": d_sae,
                                                     "metadata": {"hook_name": "blocks.3.hook_resid_post"}}))
        return folder, folder / "sae_weights.safetensors"
    if kind == "gemmascope2":
        save_file({"w_dec": w_dec, "w_enc": w_enc, "b_enc": np.zeros(d_sae, np.float32), "threshold": np.zeros(d_sae, np.float32)},
                  str(folder / "params.safetensors"))
        (folder / "config.json").write_text(json.dumps({"width": d_sae, "hf_hook_point_out": "model.layers.3.output"}))
        return folder, folder / "params.safetensors"
    if kind.startswith("gemmascope_npz"):
        arrays = {"W_enc": w_enc, "W_dec": w_dec, "b_enc": np.zeros(d_sae, np.float32), "b_dec": np.zeros(d_model, np.float32),
                  "threshold": np.zeros(d_sae, np.float32)}
        save = np.savez_compressed if kind.endswith("compressed") else np.savez
        save(folder / "params.npz", **arrays)
        return folder / "params.npz", folder / "params.npz"
    if kind == "goodfire_pth":
        from esr_local.saes.torch_zip import write_state_dict

        write_state_dict(folder / "sae.pth", {"encoder_linear.weight": w_dec.copy(), "decoder_linear.weight": w_enc.copy(),
                                              "encoder_linear.bias": np.zeros(d_sae, np.float32)})
        return folder / "sae.pth", folder / "sae.pth"
    from esr_local.vectors import ControlVector, write_gguf

    write_gguf(ControlVector({3: w_dec[0].copy(), 5: w_dec[1].copy()}, "llama", {"latents": [0, 1], "scales": [1.0, 1.0]}),
               folder / "v.gguf")
    return folder / "v.gguf", folder / "v.gguf"


# -- mutations -----------------------------------------------------------------------------------------

_HUGE = (2**31, 2**32 + 7, 2**40, 2**62, 2**64 - 1, 10**11)


def _edit_header_numbers(data: bytes, rng: random.Random) -> bytes:
    """Replace 1-3 numbers of a safetensors JSON header (shapes, offsets) with lies; the header stays valid JSON."""
    import re

    (n,) = struct.unpack("<Q", data[:8])
    head = data[8:8 + n].decode("utf-8")
    for _ in range(rng.randint(1, 3)):
        spots = [m.span() for m in re.finditer(r"\d+", head)]
        if not spots:
            break
        a, b = rng.choice(spots)
        head = head[:a] + str(rng.choice((*_HUGE, 0, 1, rng.randint(0, 10**6)))) + head[b:]
    raw = head.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


def _edit_gguf_counts(data: bytes, rng: random.Random) -> bytes:
    """Overwrite a GGUF count or length field (tensor count, key count, a string or array length) with a lie."""
    offsets = [8, 16] + [rng.randrange(24, max(25, len(data) - 8)) for _ in range(4)]
    pos = rng.choice(offsets)
    return data[:pos] + struct.pack("<Q", rng.choice(_HUGE)) + data[pos + 8:]


def mutate(data: bytes, kind: str, rng: random.Random) -> tuple[str, bytes]:
    """One seeded mutation of `data`: (description, mutated bytes)."""
    choice = rng.choice(("flip", "truncate", "overwrite", "header", "header"))
    if choice == "flip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        return "bit flips", bytes(out)
    if choice == "truncate":
        n = rng.randrange(len(data))
        return f"truncated to {n} bytes", data[:n]
    if choice == "overwrite":
        i = rng.randrange(len(data))
        n = rng.randint(1, 64)
        return f"bytes {i}..{i + n} overwritten", data[:i] + bytes(rng.randrange(256) for _ in range(n)) + data[i + n:]
    if kind == "control_vector":
        return "GGUF count/length edited", _edit_gguf_counts(data, rng)
    if kind in ("saelens", "gemmascope2"):
        return "header numbers edited", _edit_header_numbers(data, rng)
    # zip-based formats: lie in the first npy/pickle header or the zip sizes
    i = rng.randrange(min(len(data), 400))
    return f"u32 at {i} set huge", data[:i] + struct.pack("<I", rng.choice((2**31, 2**32 - 1, 10**9))) + data[i + 4:]


# -- the worker (child process) ------------------------------------------------------------------------

def _open(kind: str, target: Path) -> None:
    from esr_local.saes import load_sae
    from esr_local.vectors import describe, read_gguf

    if kind == "control_vector":
        describe(read_gguf(target), target)
        return
    sae = load_sae(str(target))
    sae.decoder_row(0)
    sae.decoder_row(sae.d_sae - 1)
    sae.row_norm(sae.d_sae // 2)


def worker(seed: int, per_format: int) -> dict:
    """Run the fuzz loop; returns {kind: {"loaded": n, "refused": n, "other": [descriptions]}}."""
    import resource

    from esr_local.errors import EsrError

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))
    rng = random.Random(seed)
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for kind in FORMATS:
            target, victim = _build(kind, root)
            original = victim.read_bytes()
            _open(kind, target)  # the unmutated file loads
            counts = {"loaded": 0, "refused": 0, "other": []}
            for i in range(per_format):
                what, data = mutate(original, kind, rng)
                victim.write_bytes(data)
                try:
                    _open(kind, target)
                    counts["loaded"] += 1
                except EsrError:
                    counts["refused"] += 1
                except BaseException as exc:  # MemoryError, struct.error, IndexError...: a reader bug
                    counts["other"].append(f"{kind} #{i} ({what}): {type(exc).__name__}: {str(exc)[:150]}")
            victim.write_bytes(original)
            report[kind] = counts
    return report


def test_fuzzed_files_load_or_fail_cleanly_within_a_memory_cap():
    seed = int(os.environ.get("ESR_FUZZ_SEED", "20260602"))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, __file__, str(seed), str(MUTATIONS_PER_FORMAT)], capture_output=True, text=True,
                       timeout=300, env=env, cwd=Path(__file__).parent)
    assert p.returncode == 0, f"the fuzz child died (rc {p.returncode}): {p.stderr[-2000:]}"
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert set(report) == set(FORMATS)
    problems = [line for counts in report.values() for line in counts["other"]]
    assert problems == [], "\n".join(problems)
    for kind, counts in report.items():
        assert counts["loaded"] + counts["refused"] == MUTATIONS_PER_FORMAT
        assert counts["refused"] >= MUTATIONS_PER_FORMAT // 4, (kind, counts)  # the mutations do break files


if __name__ == "__main__":
    print(json.dumps(worker(int(sys.argv[1]), int(sys.argv[2]))))
