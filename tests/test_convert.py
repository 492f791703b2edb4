"""llamette.convert: Hugging Face and Meta checkpoints -> GGUF, checked by round trips through the exporters.

- The default model (SmolLM2-135M-Instruct Q4_1) exported to a Hugging Face directory (dequantized float32,
  Q/K rows permuted back, tokenizer.json): transformers' LlamaForCausalLM gives the logits of llamette's numpy
  reference on the original; converting the directory back gives the same logits, tensors and tokenizer.
- The tiny random model exported to Meta's layout (params.json, consolidated.00.pth, tokenizer.model) and to a
  Hugging Face directory with a SentencePiece tokenizer.model: converted back, bit for bit.
- Output types: gguf-py reads the files; 2-D weights have the type asked for, with the bytes gguf-py's own
  quantizers give, norms stay F32.
- Bad input: a clear LlametteError naming the problem, and no output file left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_path

from llamette.convert import convert
from llamette.convert import spm as spm_proto
from llamette.convert.common import _tensor_type, permute_rows, to_bf16_bits, unpermute_rows
from llamette.convert.export import export_hf, export_meta
from llamette.errors import LlametteError
from llamette.gguf.constants import GGMLType
from llamette.gguf.reader import GGUFFile
from llamette.loader import load

TEXTS = [
    "Hello world!",
    "The capital of France is",
    "  multiple   spaces\n\nand newlines\t 12345 3.14",
    "ünïcödé 你好 🦙 don't I'll",
    "<|im_start|>user\nhi<|im_end|>",
]
# metadata the conversion must carry over unchanged (general.name, general.file_type and the model card keys differ)
CARRIED_PREFIXES = ("llama.", "tokenizer.")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(a, np.float64)))


def _ref_logits(path: Path, tokens: list[int]) -> np.ndarray:
    m = load(path, backend="ref")
    return m.net.forward(tokens, m.new_cache(64), all_logits=True)


def _same_value(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def _assert_carried(original: Path, converted: Path, ignore: tuple[str, ...] = ()) -> None:
    with GGUFFile(original) as a, GGUFFile(converted) as b:
        for key, value in a.metadata.items():
            if key.startswith(CARRIED_PREFIXES) and key not in ignore:
                assert key in b.metadata, key
                assert _same_value(value, b.metadata[key]), key
                assert a.metadata_types[key] == b.metadata_types[key], key


def _assert_same_tensors(original: Path, converted: Path) -> None:
    with GGUFFile(original) as a, GGUFFile(converted) as b:
        assert list(a.tensors) == list(b.tensors)
        for name, info in a.tensors.items():
            assert b.tensors[name].type == info.type and b.tensors[name].shape == info.shape, name
            assert np.array_equal(a.tensor_bytes(name), b.tensor_bytes(name)), name


def _leftovers(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith((".gguf", ".partial")))


# -- the default model through a Hugging Face directory ------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_hf(tmp_path_factory, smollm2_path: Path) -> Path:
    pytest.importorskip("tokenizers")
    return export_hf(smollm2_path, tmp_path_factory.mktemp("smollm2-hf"))


@pytest.fixture(scope="module")
def smollm2_converted(smollm2_hf: Path, tmp_path_factory) -> Path:
    return convert(smollm2_hf, tmp_path_factory.mktemp("smollm2-gguf") / "smollm2.F32.gguf", outtype="f32")


@pytest.mark.slow
def test_smollm2_hf_export_matches_transformers(smollm2_hf: Path, smollm2_path: Path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = json.loads((smollm2_hf / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    model = transformers.LlamaForCausalLM.from_pretrained(smollm2_hf).float().eval()
    tokens = load(smollm2_path, backend="ref").tokenizer.encode("The first man to walk on the moon was")
    with torch.no_grad():
        hf = model(torch.tensor([tokens])).logits[0].numpy()
    ref = _ref_logits(smollm2_path, tokens)
    err = _rel(ref, hf)
    print(f"transformers vs llamette reference: relative error {err:.2e}")
    assert err < 1e-4
    # transformers' tokenizer reads the exported tokenizer.json as llamette tokenizes the GGUF
    hf_tok = transformers.AutoTokenizer.from_pretrained(smollm2_hf)
    ours = load(smollm2_path, backend="ref").tokenizer
    for text in TEXTS:
        assert hf_tok.encode(text) == ours.encode(text, parse_special=True), text


@pytest.mark.slow
def test_smollm2_hf_converts_back(smollm2_converted: Path, smollm2_path: Path):
    original, back = load(smollm2_path, backend="ref"), load(smollm2_converted, backend="ref")
    for text in TEXTS:
        for special in (False, True):
            assert back.tokenizer.encode(text, parse_special=special) == original.tokenizer.encode(
                text, parse_special=special
            ), text
    tokens = original.tokenizer.encode("Once upon a time, in a land far away,")
    a = original.net.forward(tokens, original.new_cache(64), all_logits=True)
    b = back.net.forward(tokens, back.new_cache(64), all_logits=True)
    err = _rel(a, b)
    print(f"converted back vs original: relative error {err:.2e}")
    assert err < 1e-5
    # the same hyper-parameters and tokenizer: tokens, types, merges, pre-tokenizer (found by its hash), ids, template
    _assert_carried(smollm2_path, smollm2_converted)
    with GGUFFile(smollm2_converted) as g:
        assert g.metadata["tokenizer.ggml.pre"] == "smollm"
        assert g.metadata["general.file_type"] == 0 and g.metadata["general.quantization_version"] == 2
        assert "output.weight" not in g.tensors  # tied embeddings
        assert {t.type for t in g.tensors.values()} == {GGMLType.F32}


@pytest.mark.slow
def test_smollm2_converted_file_reads_in_gguf_py(smollm2_converted: Path):
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(smollm2_converted)
    assert len(reader.tensors) == 2 + 30 * 9
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.block_count"].contents() == 30
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"


# -- the same file as llama.cpp's own converter -------------------------------------------------------------


def _llama_cpp_converter() -> Path:
    """convert_hf_to_gguf.py from the llama-cpp-python sdist (the llama.cpp commit of the test fixtures)."""
    from conftest import llama_cpp_converter_dir

    return llama_cpp_converter_dir()


def _llama_cpp_convert(model_dir: Path, out: Path, outtype: str) -> Path:
    script = _llama_cpp_converter() / "convert_hf_to_gguf.py"
    cmd = [sys.executable, str(script), str(model_dir), "--outtype", outtype, "--outfile", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _assert_same_as_llama_cpp(ours: Path, theirs: Path, extra_ok: tuple[str, ...] = ()) -> None:
    """Every tensor bit for bit; every metadata key but the model card's (general.name and the like)."""
    card = ("general.name", "general.basename", "general.finetune", "general.size_label", "general.version")
    with GGUFFile(ours) as a, GGUFFile(theirs) as b:
        assert set(a.tensors) == set(b.tensors)
        for name, info in b.tensors.items():
            assert (a.tensors[name].type, a.tensors[name].shape) == (info.type, info.shape), name
            assert np.array_equal(a.tensor_bytes(name), b.tensor_bytes(name)), name
        for key, value in b.metadata.items():
            if key not in card:
                assert key in a.metadata and _same_value(a.metadata[key], value), key
                assert a.metadata_types[key] == b.metadata_types[key], key
        assert set(a.metadata) - set(b.metadata) <= {*card, *extra_ok}


@pytest.mark.slow
def test_same_file_as_llama_cpp_converter(smollm2_hf: Path, tiny_hf: Path, tmp_path: Path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("sentencepiece")
    # byte-level BPE, tied embeddings, 3 KV heads for 9 query heads, Q8_0
    theirs = _llama_cpp_convert(smollm2_hf, tmp_path / "theirs.Q8_0.gguf", "q8_0")
    _assert_same_as_llama_cpp(convert(smollm2_hf, tmp_path / "ours.Q8_0.gguf", "q8_0"), theirs)
    # SentencePiece tokenizer.model, an output tensor, F16 (we also write the SentencePiece model's unknown id)
    theirs = _llama_cpp_convert(tiny_hf, tmp_path / "theirs.F16.gguf", "f16")
    ours = convert(tiny_hf, tmp_path / "ours.F16.gguf", "f16")
    _assert_same_as_llama_cpp(ours, theirs, extra_ok=("tokenizer.ggml.unknown_token_id",))


# -- the tiny model through Meta's layout and a Hugging Face directory with tokenizer.model ---------------


@pytest.fixture(scope="module")
def tiny_meta(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    return export_meta(tiny_path("F32"), tmp_path_factory.mktemp("tiny-meta"))


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    return export_hf(tiny_path("F32"), tmp_path_factory.mktemp("tiny-hf"))


def _check_tiny_round_trip(converted: Path, ignore: tuple[str, ...] = ()) -> None:
    original = tiny_path("F32")
    _assert_same_tensors(original, converted)  # F32 in, F32 out: bit for bit
    _assert_carried(original, converted, ignore)
    a, b = load(original, backend="ref"), load(converted, backend="ref")
    for text in TEXTS:
        assert a.tokenizer.encode(text) == b.tokenizer.encode(text), text
    tokens = a.tokenizer.encode("the cat sat on the mat and it was good")
    assert _rel(_ref_logits(original, tokens), _ref_logits(converted, tokens)) < 1e-5


def test_tiny_meta_round_trip(tiny_meta: Path, tmp_path: Path):
    assert sorted(p.name for p in tiny_meta.iterdir()) == ["consolidated.00.pth", "params.json", "tokenizer.model"]
    params = json.loads((tiny_meta / "params.json").read_text())
    assert (params["dim"], params["n_layers"], params["n_heads"], params["n_kv_heads"]) == (256, 2, 4, 2)
    out = convert(tiny_meta, tmp_path / "tiny.gguf", outtype="f32")
    # Meta's layout does not say whether to add BOS: llama.cpp's default for SentencePiece (yes) applies
    _check_tiny_round_trip(out, ignore=("tokenizer.ggml.add_bos_token",))
    with GGUFFile(out) as g:
        assert g.metadata["llama.feed_forward_length"] == 768  # from dim, multiple_of, ffn_dim_multiplier
        assert g.metadata["llama.context_length"] == 256


def test_tiny_meta_tokenizer_model_is_sentencepiece(tiny_meta: Path):
    sentencepiece = pytest.importorskip("sentencepiece")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tiny_meta / "tokenizer.model"))
    ours = spm_proto.load(tiny_meta / "tokenizer.model")
    with GGUFFile(tiny_path("F32")) as g:
        tokens, scores = g.metadata["tokenizer.ggml.tokens"], g.metadata["tokenizer.ggml.scores"]
        types = g.metadata["tokenizer.ggml.token_type"]
    assert sp.vocab_size() == len(tokens) == len(ours.pieces)
    for i in range(sp.vocab_size()):
        assert sp.IdToPiece(i) == tokens[i] == ours.pieces[i]
        assert sp.GetScore(i) == scores[i] == ours.scores[i]
        assert sp.IsUnknown(i) == (types[i] == 2) and sp.IsControl(i) == (types[i] == 3)
        assert sp.IsByte(i) == (types[i] == 6)
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (ours.unk_id, ours.bos_id, ours.eos_id) == (0, 1, 2)
    # sentencepiece tokenizes with it as llamette (llama.cpp's SPM tokenizer) does with the GGUF vocabulary
    tok = load(tiny_path("F32"), backend="ref").tokenizer
    for text in TEXTS[:4]:
        assert sp.encode(text) == tok.encode(text, add_special=False), text


def test_tiny_hf_round_trip_with_sentencepiece(tiny_hf: Path, tmp_path: Path):
    assert (tiny_hf / "tokenizer.model").is_file()
    _check_tiny_round_trip(convert(tiny_hf, tmp_path / "tiny.gguf", outtype="f32"))


def test_tiny_hf_export_matches_transformers(tiny_hf: Path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.LlamaForCausalLM.from_pretrained(tiny_hf).float().eval()
    tokens = load(tiny_path("F32"), backend="ref").tokenizer.encode("the cat sat on the mat")
    with torch.no_grad():
        hf = model(torch.tensor([tokens])).logits[0].numpy()
    assert _rel(_ref_logits(tiny_path("F32"), tokens), hf) < 1e-4


def test_sharded_and_bf16_safetensors(tiny_hf: Path, tmp_path: Path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    weights = safetensors_numpy.load_file(tiny_hf / "model.safetensors")
    names = list(weights)
    # two shards and an index: the same file as from one
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_hf, sharded)
    (sharded / "model.safetensors").unlink()
    shards = {"model-00001-of-00002.safetensors": names[:7], "model-00002-of-00002.safetensors": names[7:]}
    for file, part in shards.items():
        safetensors_numpy.save_file({n: weights[n] for n in part}, sharded / file, metadata={"format": "pt"})
    index = {"weight_map": {n: f for f, part in shards.items() for n in part}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    _assert_same_tensors(convert(tiny_hf, tmp_path / "one.gguf", "f32"), convert(sharded, tmp_path / "two.gguf", "f32"))
    # bfloat16 weights (numpy has no bfloat16: read as raw words) widen exactly to float32
    bf16 = tmp_path / "bf16"
    shutil.copytree(tiny_hf, bf16)
    tensors = {n: torch.from_numpy(w).to(torch.bfloat16) for n, w in weights.items()}
    safetensors_torch.save_file(tensors, bf16 / "model.safetensors", metadata={"format": "pt"})
    out = convert(bf16, tmp_path / "bf16.gguf", "f32")
    with GGUFFile(out) as g, GGUFFile(tmp_path / "one.gguf") as ref:
        for name in ref.tensors:
            want = (to_bf16_bits(ref.tensor_bytes(name).view(np.float32)).astype(np.uint32) << 16).view(np.float32)
            assert np.array_equal(g.tensor_bytes(name).view(np.float32), want), name


# -- output types --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("outtype,qtype,file_type", [("f16", "F16", 1), ("bf16", "BF16", 32), ("q8_0", "Q8_0", 7)])
def test_outtypes(tiny_hf: Path, tmp_path: Path, outtype: str, qtype: str, file_type: int):
    gguf = pytest.importorskip("gguf")
    out = convert(tiny_hf, tmp_path / f"tiny.{qtype}.gguf", outtype=outtype)
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.file_type"].contents() == file_type
    assert reader.fields["general.quantization_version"].contents() == 2
    want_type = gguf.GGMLQuantizationType[qtype]
    with GGUFFile(tiny_path("F32")) as original:
        for t in reader.tensors:
            if len(t.shape) == 1:
                assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
                continue
            assert t.tensor_type == want_type, t.name
            # the bytes convert_hf_to_gguf.py would write: gguf-py's quantizer on the float32 weights
            f32 = np.array(original.tensor_bytes(t.name)).view(np.float32)
            assert np.array_equal(
                np.asarray(t.data).view(np.uint8).ravel(), gguf.quants.quantize(f32, want_type).view(np.uint8).ravel()
            ), t.name
    # and llamette runs it, close to the float32 model
    tokens = [1, 20, 300, 44, 5, 100]
    assert _rel(_ref_logits(tiny_path("F32"), tokens), _ref_logits(out, tokens)) < 0.05


def test_tensor_types_and_permutation():
    assert _tensor_type("blk.0.attn_norm.weight", (256,), GGMLType.Q8_0, print) == GGMLType.F32
    assert _tensor_type("output_norm.weight", (256,), GGMLType.F16, print) == GGMLType.F32
    assert _tensor_type("blk.0.attn_q.weight", (64, 64), GGMLType.Q8_0, print) == GGMLType.Q8_0
    logged = []
    assert _tensor_type("blk.0.attn_q.weight", (48, 48), GGMLType.Q8_0, logged.append) == GGMLType.F16
    assert "falling back to F16" in logged[0]
    # LlamaModel.permute of convert_hf_to_gguf.py, and its inverse
    w = np.random.default_rng(0).standard_normal((6 * 8, 5)).astype(np.float32)
    for n_head in (1, 3, 6):
        expected = w.reshape(n_head, 2, w.shape[0] // n_head // 2, 5).swapaxes(1, 2).reshape(w.shape)
        assert np.array_equal(w[permute_rows(48, n_head)], expected)
        assert np.array_equal(expected[unpermute_rows(48, n_head)], w)


# -- bad input -----------------------------------------------------------------------------------------------


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "model"))


def _expect_error(model_dir: Path, tmp_path: Path, *needles: str) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    with pytest.raises(LlametteError) as info:
        convert(model_dir, out_dir / "model.gguf", outtype="f16")
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    assert _leftovers(out_dir) == [], "a failed conversion left a file behind"


def test_not_a_model_directory(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    _expect_error(tmp_path / "empty", tmp_path, "neither config.json", "params.json")
    _expect_error(tmp_path / "nowhere", tmp_path, "does not exist")


def test_unsupported_architecture(tiny_hf: Path, tmp_path: Path):
    model = _copy(tiny_hf, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    (model / "config.json").write_text(json.dumps(config))
    _expect_error(model, tmp_path, "config.json", "Qwen2ForCausalLM is not supported", "LlamaForCausalLM")


def test_shape_mismatch(tiny_hf: Path, tmp_path: Path):
    model = _copy(tiny_hf, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] = 512
    (model / "config.json").write_text(json.dumps(config))
    _expect_error(model, tmp_path, "model.layers.0.mlp.gate_proj.weight", "[768, 256]", "expected [512, 256]")


def test_missing_tensor(tiny_hf: Path, tmp_path: Path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    model = _copy(tiny_hf, tmp_path)
    weights = safetensors_numpy.load_file(model / "model.safetensors")
    del weights["model.layers.1.mlp.down_proj.weight"]
    safetensors_numpy.save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    _expect_error(model, tmp_path, "'model.layers.1.mlp.down_proj.weight' is missing")


def test_corrupted_safetensors_header(tiny_hf: Path, tmp_path: Path):
    model = _copy(tiny_hf, tmp_path)
    path = model / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"#" * 32  # the JSON header's start
    path.write_bytes(bytes(data))
    _expect_error(model, tmp_path, "model.safetensors", "corrupted safetensors header")
    data[:8] = (len(data) * 2).to_bytes(8, "little")  # a header length past the end of the file
    path.write_bytes(bytes(data))
    _expect_error(model, tmp_path, "corrupted safetensors header", "claims")


def test_error_while_writing_leaves_nothing(tiny_hf: Path, tmp_path: Path, monkeypatch):
    import llamette.convert.common as common

    calls = []
    real = common._encode

    def failing(data, qtype):
        calls.append(1)
        if len(calls) == 5:
            raise LlametteError("disk on fire")
        return real(data, qtype)

    monkeypatch.setattr(common, "_encode", failing)
    _expect_error(tiny_hf, tmp_path, "disk on fire")


def test_meta_errors(tiny_meta: Path, tmp_path: Path, monkeypatch):
    model = _copy(tiny_meta, tmp_path)
    shutil.copy(model / "consolidated.00.pth", model / "consolidated.01.pth")
    _expect_error(model, tmp_path, "2 model-parallel shards")
    (model / "consolidated.01.pth").unlink()
    params = json.loads((model / "params.json").read_text())
    (model / "params.json").write_text(json.dumps({**params, "multiple_of": 64, "ffn_dim_multiplier": None}))
    _expect_error(model, tmp_path, "params.json", "feed-forward size of 704", "768 rows")
    (model / "params.json").write_text(json.dumps(params))
    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    _expect_error(model, tmp_path, "pip install torch")


def test_bad_outtype(tiny_hf: Path, tmp_path: Path):
    with pytest.raises(LlametteError, match="unknown outtype 'q4_0'"):
        convert(tiny_hf, tmp_path / "x.gguf", outtype="q4_0")
    assert not (tmp_path / "x.gguf").exists()
