"""The torch-free reader/writer of torch.save zip archives behind the Goodfire loader."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from esr_local.errors import FormatError
from esr_local.saes import load_sae
from esr_local.saes.torch_zip import LazyTensor, read_torch_zip, write_state_dict

FIXTURES = Path(__file__).parent / "fixtures"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "goodfire_tiny_expected.npz") as e:
        return {k: e[k] for k in e.files}


def test_reads_real_torch_save_file():
    tensors = read_torch_zip(FIXTURES / "goodfire_tiny.pth")
    expected = _expected()
    assert list(tensors) == list(expected)  # state_dict order kept
    for name, a in expected.items():
        assert tensors[name].shape == a.shape and tensors[name].dtype == "float32"
        np.testing.assert_array_equal(tensors[name].read(), a)
    dec = tensors["decoder_linear.weight"]
    np.testing.assert_array_equal(dec.col(7), expected["decoder_linear.weight"][:, 7])
    np.testing.assert_array_equal(dec.row(3), expected["decoder_linear.weight"][3])


def test_real_torch_views_respect_storage_offset_and_strides():
    """goodfire_tiny_views.pth: encoder = rows 3.. of a [43, 16] tensor, decoder = its transpose (same storage)."""
    tensors = read_torch_zip(FIXTURES / "goodfire_tiny_views.pth")
    enc, dec = tensors["encoder_linear.weight"], tensors["decoder_linear.weight"]
    assert enc.strides == (16, 1) and dec.strides == (1, 16) and dec.shape == (16, 40)
    assert enc.offset == dec.offset  # one storage, same storage offset
    full = enc.read()
    np.testing.assert_array_equal(dec.read(), full.T)
    sae = load_sae(str(FIXTURES / "goodfire_tiny_views.pth"))
    for i in (0, 1, 39):  # tied weights: decoder direction i == encoder row i
        np.testing.assert_array_equal(sae.decoder_row(i), full[i])
    # The storage offset matters: the bytes 3 rows earlier hold different values.
    with zipfile.ZipFile(FIXTURES / "goodfire_tiny_views.pth") as zf:
        storage = np.frombuffer(zf.read("goodfire_tiny_views/data/0"), dtype="<f4").reshape(43, 16)
    np.testing.assert_array_equal(storage[3:], full)
    assert not np.array_equal(storage[:40], full)


@pytest.mark.parametrize("force_zip64", [False, True])
def test_writer_round_trip_is_a_valid_zip(tmp_path, force_zip64):
    arrays = _expected()
    path = write_state_dict(tmp_path / "ours.pth", arrays, force_zip64=force_zip64)
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # CRCs and sizes are right
        names = zf.namelist()
        assert "ours/data.pkl" in names and "ours/byteorder" in names
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
    tensors = read_torch_zip(path)
    for name, a in arrays.items():
        np.testing.assert_array_equal(tensors[name].read(), a)
        assert tensors[name].offset % 64 == 0  # data aligned like torch's writer
    sae = load_sae(str(path))
    np.testing.assert_array_equal(sae.decoder_row(5), arrays["decoder_linear.weight"][:, 5])


def test_writer_streams_chunks_and_sparse_zeros(tmp_path):
    d_model, d_sae = 8, 1000

    def chunks():
        for r0 in range(0, d_model, 3):
            rows = np.arange(r0, min(r0 + 3, d_model))[:, None]
            yield (rows * 1000 + np.arange(d_sae)[None, :]).astype(np.float32)

    path = write_state_dict(
        tmp_path / "lazy.pth",
        {
            "encoder_linear.weight": LazyTensor((d_sae, d_model)),  # sparse zeros
            "encoder_linear.bias": np.zeros(d_sae, np.float32),
            "decoder_linear.weight": LazyTensor((d_model, d_sae), chunks=chunks),
            "decoder_linear.bias": np.ones(d_model, np.float32),
        },
    )
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
    sae = load_sae(str(path))
    np.testing.assert_array_equal(sae.decoder_row(321), np.arange(d_model) * 1000 + 321)
    assert not sae.encode(np.ones((2, d_model)), [0, 999]).any()


# Peak RSS comes from VmHWM, the high-water mark of this process image: ru_maxrss would carry over the
# (possibly large) RSS of the pytest process that spawned it, hiding any growth below that level.
_MEASURE = r"""
import json, sys
import numpy as np
from esr_local.saes import load_sae

def proc(file, key):
    with open(file) as fh:
        return int(next(l for l in fh if l.startswith(key)).split()[1])

hwm0, r0 = proc("/proc/self/status", "VmHWM:"), proc("/proc/self/io", "rchar:")
sae = load_sae(sys.argv[1])
row = sae.decoder_row(int(sys.argv[2]))
hwm1, r1 = proc("/proc/self/status", "VmHWM:"), proc("/proc/self/io", "rchar:")
print(json.dumps({"read": r1 - r0, "rss_growth_kb": hwm1 - hwm0, "row": row.tolist()}))
"""


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_single_column_read_touches_little_of_a_large_file(tmp_path):
    """A 128 MB file (64 MB decoder + 64 MB encoder): one latent costs KBs of reads and no RSS growth."""
    d_model, d_sae = 256, 65536

    def dec_chunks():  # dec[r, c] = r + c / 65536, exact in float32
        for r0 in range(0, d_model, 32):
            r = np.arange(r0, r0 + 32, dtype=np.float64)[:, None]
            yield (r + np.arange(d_sae)[None, :] / 65536.0).astype(np.float32)

    path = write_state_dict(
        tmp_path / "big.pth",
        {
            "encoder_linear.weight": LazyTensor((d_sae, d_model)),
            "encoder_linear.bias": LazyTensor((d_sae,)),
            "decoder_linear.weight": LazyTensor((d_model, d_sae), chunks=dec_chunks),
            "decoder_linear.bias": LazyTensor((d_model,)),
        },
    )
    assert path.stat().st_size > 128 * 2**20
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path), "40000"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    np.testing.assert_array_equal(np.array(res["row"], np.float32), np.arange(d_model) + 40000 / 65536.0)
    assert res["read"] < 1 * 2**20, res["read"]  # a full read would be >= 64 MB
    assert res["rss_growth_kb"] < 16 * 1024, res["rss_growth_kb"]  # loading the decoder would add 64 MB


# ---------------------------------------------------------------------------------------------- bad inputs


def _zip_with_pickle(path: Path, payload: bytes, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/byteorder", "little")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_pickle_global_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = _zip_with_pickle(tmp_path / "evil.pth", pickle.dumps(OrderedDict(x=_Evil(marker)), protocol=2))
    with pytest.raises(FormatError, match=r"refusing to load.*system"):
        load_sae(str(path))
    assert not marker.exists()
    # Other globals a state_dict never needs are refused too.
    payload = pickle.dumps(OrderedDict(x=Path("/etc/passwd")), protocol=2)
    with pytest.raises(FormatError, match="refusing to load"):
        read_torch_zip(_zip_with_pickle(tmp_path / "path.pth", payload))


def test_pickle_cannot_rewrite_a_tensor_record_after_validation(tmp_path):
    """BUILD on a rebuilt tensor (to swap in a bad offset after the checks ran) is refused."""
    from esr_local.saes.torch_zip import _pickle_int, _pickle_str, _pickle_tuple

    storage = _pickle_tuple([_pickle_str("storage"), b"ctorch\nFloatStorage\n", _pickle_str("0"), _pickle_str("cpu"),
                             _pickle_int(640)])
    args = _pickle_tuple([storage + b"Q", _pickle_int(0), _pickle_tuple([_pickle_int(16), _pickle_int(40)]),
                          _pickle_tuple([_pickle_int(40), _pickle_int(1)]), b"\x89"])
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R"
    tampered = tensor + b"}" + _pickle_str("storage_offset") + _pickle_int(10**6) + b"sb"  # EMPTY_DICT SETITEM BUILD
    for body, ok in ((tensor, True), (tampered, False)):
        payload = b"\x80\x02ccollections\nOrderedDict\n)R(" + _pickle_str("decoder_linear.weight") + body + b"u."
        path = _zip_with_pickle(tmp_path / f"t{ok}.pth", payload, {"archive/data/0": bytes(2560)})
        if ok:
            assert read_torch_zip(path)["decoder_linear.weight"].shape == (16, 40)
        else:
            with pytest.raises(FormatError, match="modify a tensor record"):
                read_torch_zip(path)


def test_corrupt_truncated_and_legacy_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(FormatError, match="not a readable zip"):
        load_sae(str(junk))
    data = (FIXTURES / "goodfire_tiny.pth").read_bytes()
    trunc = tmp_path / "truncated.pth"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="download it again"):
        load_sae(str(trunc))
    legacy = tmp_path / "legacy.pt"  # pre-1.6 torch files are bare pickles, not zips
    legacy.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(FormatError, match="legacy"):
        load_sae(str(legacy))
    nozip = tmp_path / "plain.pth"
    with zipfile.ZipFile(nozip, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(FormatError, match="not a torch.save archive"):
        load_sae(str(nozip))


def test_structural_errors(tmp_path):
    # A pickle that is not a state_dict.
    with pytest.raises(FormatError, match="expected a state_dict"):
        read_torch_zip(_zip_with_pickle(tmp_path / "list.pth", pickle.dumps([1, 2, 3], protocol=2)))
    # Garbage pickle bytes.
    with pytest.raises(FormatError, match="not a readable state_dict pickle"):
        read_torch_zip(_zip_with_pickle(tmp_path / "garbage.pth", b"\x80\x02garbage"))
    # A tensor whose storage record is missing from the archive.
    good = tmp_path / "good.pth"
    write_state_dict(good, _expected())
    with zipfile.ZipFile(good) as zf:
        pkl = zf.read("good/data.pkl")
    with pytest.raises(FormatError, match="missing from the archive"):
        read_torch_zip(_zip_with_pickle(tmp_path / "nostorage.pth", pkl))
    # Storage members that were deflated cannot be read in place.
    deflated = tmp_path / "deflated.pth"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(deflated, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename.replace("good/", "deflated/"), src.read(info.filename))
    with pytest.raises(FormatError, match="compressed"):
        read_torch_zip(deflated)
    # A storage record shorter than the tensor it claims to hold.
    short = tmp_path / "short.pth"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(short, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info.filename.replace("good/", "short/"), data[:100] if info.filename == "good/data/2" else data)
    with pytest.raises(FormatError, match="shorter than"):
        read_torch_zip(short)


def test_wrong_keys_and_shapes(tmp_path):
    e = _expected()
    renamed = {"W_enc": e["encoder_linear.weight"], "W_dec": e["decoder_linear.weight"]}
    with pytest.raises(FormatError, match=r"not a Goodfire SAE: missing encoder_linear.weight, decoder_linear.weight"):
        load_sae(str(write_state_dict(tmp_path / "renamed.pth", renamed)))
    bad = dict(e, **{"encoder_linear.weight": e["encoder_linear.weight"][:, :8]})
    with pytest.raises(FormatError, match="encoder_linear.weight has shape"):
        load_sae(str(write_state_dict(tmp_path / "badshape.pth", bad)))
