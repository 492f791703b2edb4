"""`llamette quantize`: llama.cpp's per-tensor mixes, the GGUF writer, and whole-file quantization."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DATA

from llamette.errors import LlametteError
from llamette.gguf.constants import GGMLType
from llamette.gguf.reader import GGUFFile
from llamette.gguf.writer import GGUFWriter, TensorSpec
from llamette.quantizer import FTYPES, Options, choose_types_for, ftype_named

MIXES = json.loads((DATA / "quant" / "mixes.json").read_text())["models"]
CASES = [(model, ftype) for model in MIXES for ftype in MIXES[model]["types"]]


@pytest.mark.parametrize(("model", "ftype"), CASES, ids=[f"{m}-{f}" for m, f in CASES])
def test_mix_types_equal_llama_cpp(model: str, ftype: str) -> None:
    """Every tensor gets the type llama.cpp's quantizer gave it (tests/data/quant/mixes.json: GQA 4 and 1,
    16/8/4 layers, tied output, 288-wide rows that need the fallbacks)."""
    m = MIXES[model]
    meta = {"general.architecture": "llama", **m["hparams"]}
    tensors = [(name, GGMLType.F32, tuple(shape)) for name, shape in m["tensors"]]
    ours, _ = choose_types_for(meta, tensors, ftype_named(ftype), Options())
    theirs = m["types"][ftype]
    assert {n: t.name for n, t in ours.items()} == theirs


def test_pure_and_overrides() -> None:
    m = MIXES["gqa4-16layers"]
    meta = {"general.architecture": "llama", **m["hparams"]}
    tensors = [(name, GGMLType.F32, tuple(shape)) for name, shape in m["tensors"]]
    pure, _ = choose_types_for(meta, tensors, ftype_named("Q4_K_M"), Options(pure=True))
    assert {t for n, t in pure.items() if "norm" not in n} == {GGMLType.Q4_K}
    assert pure["output_norm.weight"] == GGMLType.F32
    opts = Options(output_tensor_type=GGMLType.Q8_0, token_embedding_type=GGMLType.F16)
    mixed, _ = choose_types_for(meta, tensors, ftype_named("Q4_K_M"), opts)
    assert mixed["output.weight"] == GGMLType.Q8_0 and mixed["token_embd.weight"] == GGMLType.F16
    left, _ = choose_types_for(meta, tensors, ftype_named("Q4_0"), Options(leave_output_tensor=True))
    assert left["output.weight"] == GGMLType.F32


def test_type_names() -> None:
    assert ftype_named("q4_k").name == "Q4_K_M" and ftype_named("Q3_K").name == "Q3_K_M"
    assert set(FTYPES) >= {"Q2_K", "Q3_K_S", "Q3_K_L", "Q4_K_S", "Q5_K_S", "Q5_K_M", "IQ4_XS", "BF16"}
    with pytest.raises(LlametteError, match="unknown quantization type 'Q9'"):
        ftype_named("Q9")


def test_writer_reproduces_a_llama_cpp_file(tmp_path) -> None:
    src_path = DATA / "tiny" / "tiny-random-llama.Q4_K.gguf"
    with GGUFFile(src_path) as src:
        meta = [(k, src.metadata_types[k], v) for k, v in src.metadata.items()]
        specs = [TensorSpec(n, t.type, t.shape) for n, t in src.tensors.items()]
        with GGUFWriter(tmp_path / "copy.gguf", meta, specs) as w:
            for n in src.tensors:
                w.write(n, src.tensor_bytes(n))
    assert (tmp_path / "copy.gguf").read_bytes() == src_path.read_bytes()


def test_writer_leaves_nothing_on_failure(tmp_path) -> None:
    specs = [TensorSpec("a", GGMLType.F32, (4,)), TensorSpec("b", GGMLType.F32, (4,))]
    with pytest.raises(LlametteError, match="out of order"), GGUFWriter(tmp_path / "x.gguf", [], specs) as w:
        w.write("b", np.zeros(4, np.float32))
    with pytest.raises(LlametteError, match="1 of 2 tensors"), GGUFWriter(tmp_path / "x.gguf", [], specs) as w:
        w.write("a", np.zeros(4, np.float32))
    with pytest.raises(LlametteError, match="expected 16"), GGUFWriter(tmp_path / "x.gguf", [], specs) as w:
        w.write("a", np.zeros(3, np.float32))
    assert list(tmp_path.iterdir()) == []


PURE = {"F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0",
        "Q5_1": "Q5_1", "Q2_K": "Q2_K", "Q3_K": "Q3_K", "Q4_K": "Q4_K", "Q5_K": "Q5_K", "Q6_K": "Q6_K",
        "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS"}  # fmt: skip


@pytest.mark.parametrize("fixture", list(PURE))
def test_pure_quantization_equals_llama_quantize_file(fixture: str, tmp_path, capsys) -> None:
    """`llamette quantize --pure` of the tiny F32 model writes llama-quantize's file byte for byte (the same
    tensor bytes, metadata and order)."""
    from llamette import cli

    out = tmp_path / f"{fixture}.gguf"
    code = cli.main(["quantize", str(DATA / "tiny" / "tiny-random-llama.F32.gguf"), str(out), PURE[fixture], "--pure"])
    assert code == 0, capsys.readouterr().err
    assert out.read_bytes() == (DATA / "tiny" / f"tiny-random-llama.{fixture}.gguf").read_bytes()
    assert "bits per weight" in capsys.readouterr().err


def test_mix_file_reads_in_gguf_py_and_runs(tmp_path, capsys) -> None:
    import gguf

    from llamette import cli
    from llamette.loader import load

    out = tmp_path / "q4km.gguf"
    assert cli.main(["quantize", str(DATA / "tiny" / "tiny-random-llama.F32.gguf"), str(out), "Q4_K_M", "-t", "2"]) == 0
    err = capsys.readouterr().err
    assert "[  21/21]" in err and "Q4_K" in err
    reader = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["output.weight"] == "Q6_K" and types["blk.1.ffn_down.weight"] == "Q6_K"  # use_more_bits(1, 2)
    assert types["blk.0.ffn_down.weight"] == "Q4_K"
    assert types["blk.0.attn_q.weight"] == "Q4_K" and types["output_norm.weight"] == "F32"
    fields = {f.name: f for f in reader.fields.values()}
    assert int(fields["general.file_type"].parts[-1][0]) == 15
    assert int(fields["general.quantization_version"].parts[-1][0]) == 2
    model = load(out, backend="cpu")
    f32 = load(DATA / "tiny" / "tiny-random-llama.F32.gguf", backend="cpu")
    tokens = [1, 5, 9, 33, 70]
    a = model.net.forward(tokens, model.new_cache(16))[0]
    b = f32.net.forward(tokens, f32.new_cache(16))[0]
    # this random model is touchy: llama.cpp's own pure Q4_K is 0.19 from F32 (tests/data/tiny logits); the
    # mix, with Q6_K where llama.cpp puts it, must do no worse
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.19


def test_bad_input_leaves_no_file(tmp_path, capsys) -> None:
    from llamette import cli

    f32 = str(DATA / "tiny" / "tiny-random-llama.F32.gguf")
    q4 = str(DATA / "tiny" / "tiny-random-llama.Q4_0.gguf")
    cases = [
        ([str(tmp_path / "missing.gguf"), str(tmp_path / "o.gguf"), "Q4_0"], "no such file"),
        ([f32, str(tmp_path / "o.gguf"), "Q9_Z"], "unknown quantization type"),
        ([q4, str(tmp_path / "o.gguf"), "Q8_0"], "--allow-requantize"),
        ([f32, f32, "Q4_0"], "overwrite the input"),
        ([f32, str(tmp_path / "o.gguf"), "Q4_0", "--output-tensor-type", "Q7"], "unknown tensor type"),
        ([str(DATA / "tiny" / "manifest.json"), str(tmp_path / "o.gguf"), "Q4_0"], "GGUF"),
    ]
    for args, message in cases:
        assert cli.main(["quantize", *args]) == 1
        assert message in capsys.readouterr().err, args
    assert not (tmp_path / "o.gguf").exists() and not list(tmp_path.glob(".*partial"))


def test_requantize_when_allowed(tmp_path) -> None:
    from llamette import cli

    out = tmp_path / "q8.gguf"
    args = ["quantize", str(DATA / "tiny" / "tiny-random-llama.Q4_0.gguf"), str(out), "Q8_0", "--allow-requantize"]
    assert cli.main(args) == 0
    with GGUFFile(out) as g:
        assert g.tensors["blk.0.attn_q.weight"].type == GGMLType.Q8_0
