"""Regenerate mixes.json: the tensor types llama.cpp's quantizer picks for each mix, for random Llama models
whose shapes exercise the recipes (GQA 4 and 1, 16 and 8 layers, tied output, rows that are not a multiple
of 256). Needs llama-cpp-python 0.3.36 (its llama_model_quantize); never run in CI:
    PYTHONPATH=src python tests/data/quant/make_mixes.py > tests/data/quant/mixes.json"""

import ctypes
import json
import sys
import tempfile
from pathlib import Path

import llama_cpp
import numpy as np

from llamette.gguf.constants import GGMLType, GGUFValueType
from llamette.gguf.reader import GGUFFile
from llamette.gguf.writer import GGUFWriter, TensorSpec

TINY = Path(__file__).parents[1] / "tiny" / "tiny-random-llama.F32.gguf"
MODELS = {
    "gqa4-16layers": {"dim": 256, "ffn": 512, "layers": 16, "heads": 8, "kv_heads": 2, "tied": False},
    "gqa1-8layers-tied": {"dim": 256, "ffn": 768, "layers": 8, "heads": 4, "kv_heads": 4, "tied": True},
    "dim288-4layers": {"dim": 288, "ffn": 768, "layers": 4, "heads": 6, "kv_heads": 2, "tied": False},
}
FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12,
          "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25,
          "IQ4_XS": 30}  # fmt: skip


def tensors(m: dict) -> list[tuple[str, tuple[int, ...]]]:
    d, f, hd = m["dim"], m["ffn"], m["dim"] // m["heads"]
    out = [("token_embd.weight", (512, d))]
    for i in range(m["layers"]):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (d,)), (p + "attn_q.weight", (d, d)),
                (p + "attn_k.weight", (m["kv_heads"] * hd, d)), (p + "attn_v.weight", (m["kv_heads"] * hd, d)),
                (p + "attn_output.weight", (d, d)), (p + "ffn_norm.weight", (d,)), (p + "ffn_gate.weight", (f, d)),
                (p + "ffn_up.weight", (f, d)), (p + "ffn_down.weight", (d, f))]  # fmt: skip
    out.append(("output_norm.weight", (d,)))
    if not m["tied"]:
        out.append(("output.weight", (512, d)))
    return out


def write_model(path: Path, m: dict) -> dict:
    tiny = GGUFFile(TINY)
    meta = {k: (tiny.metadata_types[k], v) for k, v in tiny.metadata.items()}
    u32 = GGUFValueType.UINT32
    meta.update({
        "llama.embedding_length": (u32, m["dim"]), "llama.feed_forward_length": (u32, m["ffn"]),
        "llama.block_count": (u32, m["layers"]), "llama.attention.head_count": (u32, m["heads"]),
        "llama.attention.head_count_kv": (u32, m["kv_heads"]),
        "llama.rope.dimension_count": (u32, m["dim"] // m["heads"]),
    })  # fmt: skip
    specs = [TensorSpec(n, GGMLType.F32, s) for n, s in tensors(m)]
    rng = np.random.default_rng(0)
    with GGUFWriter(path, [(k, t, v) for k, (t, v) in meta.items()], specs) as w:
        for s in specs:
            w.write(s.name, rng.standard_normal(s.shape).astype(np.float32) * 0.02)
    return {k: v for k, (t, v) in meta.items() if k.startswith("llama.")}


def main() -> None:
    llama_cpp.llama_backend_init()
    out = {"source": "llama-cpp-python 0.3.36 llama_model_quantize, default params (no imatrix)", "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, m in MODELS.items():
            src = Path(tmp) / f"{name}.gguf"
            hparams = write_model(src, m)
            entry = {"hparams": {k: int(v) if not isinstance(v, float) else v for k, v in hparams.items()},
                     "tensors": [[n, list(s)] for n, s in tensors(m)], "types": {}}  # fmt: skip
            for fname, fid in FTYPES.items():
                dst = Path(tmp) / f"{name}.{fname}.gguf"
                params = llama_cpp.llama_model_quantize_default_params()
                params.ftype = fid
                params.nthread = 2
                rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
                assert rc == 0, (name, fname)
                with GGUFFile(dst) as q:
                    entry["types"][fname] = {n: t.type.name for n, t in q.tensors.items()}
            out["models"][name] = entry
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
