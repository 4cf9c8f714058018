"""GGUF control-vector export: exact values, llama.cpp loader rules, round trip, multi-latent sums, and the
exported file steering the real model exactly like the in-memory vector."""

import json

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from esr_local.cli import main
from esr_local.errors import FormatError
from esr_local.vectors import read_gguf

D_IN, D_SAE = 576, 12


@pytest.fixture()
def saelens_dir(tmp_path):
    """A tiny SAELens-layout SAE for SmolLM2's width with known decoder rows and a non-zero b_dec."""
    rng = np.random.default_rng(3)
    w_dec = rng.standard_normal((D_SAE, D_IN)).astype(np.float32)
    d = tmp_path / "sae"
    d.mkdir()
    save_file({"W_dec": w_dec, "W_enc": w_dec.T.copy(), "b_enc": np.zeros(D_SAE, np.float32),
               "b_dec": np.full(D_IN, 7.0, np.float32)}, str(d / "sae_weights.safetensors"))
    (d / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
                                            "metadata": {"hook_name": "blocks.10.hook_resid_post", "model_name": "tiny"}}))
    (d / "labels.csv").write_text("index_in_sae,label\n" + "".join(f"{i},concept {i}\n" for i in range(D_SAE)))
    return d, w_dec


def _export(args):
    r = CliRunner().invoke(main, ["vector", "export", *args])
    assert r.exit_code == 0, r.output
    return r.output.strip().splitlines()[-1]


def test_export_writes_scale_times_raw_row_at_the_layer(saelens_dir, tmp_path):
    d, w_dec = saelens_dir
    out = _export(["--sae", str(d), "--latent", "3", "--scale", "8", "--layer", "10", "-o", str(tmp_path / "v.gguf")])
    cv = read_gguf(out)
    assert sorted(cv.directions) == [10]
    np.testing.assert_array_equal(cv.directions[10], (8 * w_dec[3]).astype(np.float32))
    assert cv.provenance["latents"] == [3] and cv.provenance["scales"] == [8.0]
    assert cv.provenance["labels"] == ["concept 3"]
    assert cv.provenance["row_norms"][0] == pytest.approx(float(np.linalg.norm(w_dec[3])), rel=1e-6)
    assert cv.provenance["sae_source"] == str(d)


def test_file_obeys_llama_cpp_loader_rules(saelens_dir, tmp_path):
    d, _ = saelens_dir
    out = _export(["--sae", str(d), "--latent", "1", "--scale", "2", "--layer", "10", "-o", str(tmp_path / "v.gguf")])
    r = gguf.GGUFReader(out)
    arch = r.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "controlvector"
    assert "controlvector.model_hint" in r.fields and "controlvector.layer_count" in r.fields
    (t,) = r.tensors
    assert t.name == "direction.10"
    assert t.tensor_type == gguf.GGMLQuantizationType.F32
    assert list(t.shape) == [D_IN]


def test_multi_latent_file_sums_the_terms(saelens_dir, tmp_path):
    d, w_dec = saelens_dir
    out = _export(["--sae", str(d), "--latent", "2", "--scale", "8", "--latent", "5", "--scale", "-2.5",
                   "--layer", "10", "-o", str(tmp_path / "v.gguf")])
    cv = read_gguf(out)
    expected = (8 * w_dec[2].astype(np.float64) - 2.5 * w_dec[5].astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(cv.directions[10], expected, rtol=0, atol=1e-5)


def test_inspect_shows_provenance(saelens_dir, tmp_path):
    d, _ = saelens_dir
    out = _export(["--sae", str(d), "--latent", "4", "--scale", "3", "--layer", "10", "-o", str(tmp_path / "v.gguf")])
    r = CliRunner().invoke(main, ["vector", "inspect", out, "--json"])
    info = json.loads(r.output)
    assert info["layers"] == [10] and info["n_embd"] == D_IN
    assert info["provenance"]["latents"] == [4]
    text = CliRunner().invoke(main, ["vector", "inspect", out]).output
    assert "latent 4 x 3" in text and "concept 4" in text


def test_default_output_goes_to_vectors_folder(saelens_dir, tmp_path):
    d, _ = saelens_dir
    out = _export(["--sae", str(d), "--latent", "0", "--scale", "1", "--layer", "10"])
    assert out.startswith(str(tmp_path / "vectors")) and out.endswith(".gguf")


def test_reader_rejects_what_llama_cpp_rejects(tmp_path):
    def write(name, arr):
        p = tmp_path / f"{name.replace('.', '_')}.gguf"
        w = gguf.GGUFWriter(str(p), arch="controlvector")
        w.add_tensor(name, arr)
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
        return p

    with pytest.raises(FormatError):
        read_gguf(write("direction.0", np.ones(4, np.float32)))
    with pytest.raises(FormatError):
        read_gguf(write("direction.3", np.ones(4, np.float16)))
    with pytest.raises(FormatError):
        read_gguf(write("direction.3", np.ones((2, 4), np.float32)))
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 20)
    with pytest.raises(FormatError):
        read_gguf(bad)


def test_exported_file_steers_like_the_in_memory_vector(saelens_dir, tmp_path, smollm2):
    from esr_local.engine import SamplingParams

    d, w_dec = saelens_dir
    out = _export(["--sae", str(d), "--latent", "6", "--scale", "3", "--layer", "10", "-o", str(tmp_path / "v.gguf")])
    sp = SamplingParams(temperature=0.0, max_tokens=30)
    smollm2.set_directions(read_gguf(out).directions)
    from_file = smollm2.generate("How do you boil an egg?", sp, 0).text
    smollm2.set_directions({10: 3 * w_dec[6]})
    direct = smollm2.generate("How do you boil an egg?", sp, 0).text
    smollm2.clear()
    plain = smollm2.generate("How do you boil an egg?", sp, 0).text
    assert from_file == direct
    assert from_file != plain
