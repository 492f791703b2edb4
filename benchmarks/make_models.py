"""Write the benchmark models into benchmarks/models (or --out-dir).

  tinyllama: a GGUF with TinyLlama-1.1B's shapes, random weights (normal, std 0.02, seeded) and a real
             32000-token SentencePiece vocab (llama.cpp's ggml-vocab-llama-spm.gguf); first F16, then Q4_0
             and Q8_0 made from the F16 file with gguf-py's quantizer.
  smollm2:   the default model (SmolLM2-135M-Instruct Q4_1) re-quantized to Q8_0 and Q4_0 with gguf-py.

Tensors are streamed one at a time (header and tensor table first, then each tensor's data), so memory stays
at about one tensor in float32 however large the file. Existing files are kept unless --force.

    python benchmarks/make_models.py tinyllama
    python benchmarks/make_models.py smollm2 --types Q8_0 Q4_0
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType
    from gguf.quants import dequantize, quantize
except ImportError:  # pragma: no cover - a hint instead of a traceback
    sys.exit("error: needs gguf-py: pip install gguf (it is in llamette's test extras)")

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "models"

# llama.cpp's vocab test files ship in this sdist; the test suite caches them here (tests/conftest.py)
LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"
VOCAB_CACHE = REPO / "tests" / ".cache" / "llama-cpp-vocab"
SPM_VOCAB = "ggml-vocab-llama-spm.gguf"

TINYLLAMA_STEM = "tinyllama-1.1b-random"
SMOLLM2_STEM = "smollm2-135m-instruct"

QTYPES = {"Q4_0": GGMLQuantizationType.Q4_0, "Q8_0": GGMLQuantizationType.Q8_0}
FILE_TYPES = {
    "F16": LlamaFileType.MOSTLY_F16,  # 1
    "Q4_0": LlamaFileType.MOSTLY_Q4_0,  # 2
    "Q8_0": LlamaFileType.MOSTLY_Q8_0,  # 7
}


@dataclass(frozen=True)
class LlamaShape:
    """The hyperparameters that fix a Llama model's tensor shapes (TinyLlama-1.1B's by default)."""

    n_layers: int = 22
    n_embd: int = 2048
    n_ff: int = 5632
    n_head: int = 32
    n_head_kv: int = 4
    n_vocab: int = 32000
    n_ctx: int = 2048
    rope_freq_base: float = 10000.0
    rms_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, numpy shape) in the order convert_hf_to_gguf writes them for llama: the embedding, each block
        (HF's alphabetical order), the final norm, the separate output matrix. Numpy shape = GGUF ne reversed."""
        kv = self.n_head_kv * self.head_dim
        out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (self.n_vocab, self.n_embd))]
        for i in range(self.n_layers):
            b = f"blk.{i}"
            out += [
                (f"{b}.attn_norm.weight", (self.n_embd,)),
                (f"{b}.ffn_down.weight", (self.n_embd, self.n_ff)),
                (f"{b}.ffn_gate.weight", (self.n_ff, self.n_embd)),
                (f"{b}.ffn_up.weight", (self.n_ff, self.n_embd)),
                (f"{b}.ffn_norm.weight", (self.n_embd,)),
                (f"{b}.attn_k.weight", (kv, self.n_embd)),
                (f"{b}.attn_output.weight", (self.n_embd, self.n_embd)),
                (f"{b}.attn_q.weight", (self.n_embd, self.n_embd)),
                (f"{b}.attn_v.weight", (kv, self.n_embd)),
            ]
        out += [("output_norm.weight", (self.n_embd,)), ("output.weight", (self.n_vocab, self.n_embd))]
        return out


# -- progress ------------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def progress(items: list[Any], desc: str, total_bytes: int, size: Callable[[Any], int]) -> Iterator[Any]:
    """Yield items with progress on stderr: a tqdm bar over bytes when tqdm is installed, else a line per item."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        with tqdm(total=total_bytes, desc=desc, unit="B", unit_scale=True, file=sys.stderr) as bar:
            for item in items:
                yield item
                bar.update(size(item))
        return
    t0 = time.perf_counter()
    for i, item in enumerate(items):
        yield item
        log(f"{desc}: {i + 1}/{len(items)} {getattr(item, 'name', '')} ({time.perf_counter() - t0:.0f} s)")


# -- GGUF helpers ----------------------------------------------------------------------------------------------


def copy_field(writer: GGUFWriter, field: Any, key: str | None = None) -> None:
    """Copy one metadata field from a GGUFReader to a writer, keeping its exact type (strings as raw bytes)."""
    key = key or field.name
    vtype = field.types[0]
    if vtype == GGUFValueType.ARRAY:
        sub = field.types[-1]
        if len(field.types) != 2:
            raise NotImplementedError(f"{key}: nested arrays are not supported")
        if sub == GGUFValueType.STRING:
            value: Any = [bytes(field.parts[i]) for i in field.data]
        else:
            value = field.contents()
        writer.add_key_value(key, value, vtype, sub_type=sub)
    elif vtype == GGUFValueType.STRING:
        writer.add_key_value(key, bytes(field.parts[-1]), vtype)
    else:
        writer.add_key_value(key, field.contents(), vtype)


@dataclass
class OutTensor:
    """A tensor to write: its numpy (logical) shape, GGML type, byte size and a function making its data."""

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    nbytes: int
    make: Callable[[], np.ndarray]


def tensor_nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    return n // block * type_size


def write_streaming(path: Path, writer: GGUFWriter, tensors: list[OutTensor], desc: str) -> None:
    """Write header, metadata and tensor table, then each tensor's data as it is made; to path + '.tmp' first,
    renamed at the end, so an interrupted run leaves no file that looks finished."""
    tmp = path.with_name(path.name + ".tmp")
    for t in tensors:
        if t.qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            dtype = np.float32 if t.qtype == GGMLQuantizationType.F32 else np.float16
            writer.add_tensor_info(t.name, t.shape, np.dtype(dtype), t.nbytes)
        else:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total = sum(t.nbytes for t in tensors)
        for t in progress(tensors, desc, total, lambda t: t.nbytes):
            data = t.make()
            if data.nbytes != t.nbytes:
                raise RuntimeError(f"{t.name}: made {data.nbytes} bytes, expected {t.nbytes}")
            writer.write_tensor_data(data)
        writer.close()
        tmp.replace(path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    log(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB)")


# -- the vocab ---------------------------------------------------------------------------------------------


def fetch_spm_vocab() -> Path:
    """llama.cpp's ggml-vocab-llama-spm.gguf: from the test suite's cache, else downloaded (the llama-cpp-python
    sdist, `pip download`, as tests/conftest.py does) into that cache."""
    target = VOCAB_CACHE / SPM_VOCAB
    if target.exists():
        return target
    log(f"downloading the {LLAMA_CPP_SDIST} sdist for llama.cpp's vocab files ...")
    VOCAB_CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        proc = subprocess.run([*cmd, LLAMA_CPP_SDIST, "-d", tmp], capture_output=True, text=True)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not archives:
            sys.exit(f"error: could not download {LLAMA_CPP_SDIST} for its vocab files:\n{proc.stderr[-2000:]}")
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if member.isfile() and "/vendor/llama.cpp/models/" in member.name and name.startswith("ggml-vocab-"):
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    (VOCAB_CACHE / name).write_bytes(extracted.read())
    (VOCAB_CACHE / ".complete").touch()  # the test suite's marker: the whole set is there
    if not target.exists():
        sys.exit(f"error: {SPM_VOCAB} is not in {LLAMA_CPP_SDIST}")
    return target


# -- tinyllama ---------------------------------------------------------------------------------------------


LLAMA2_7B = LlamaShape(n_layers=32, n_embd=4096, n_ff=11008, n_head=32, n_head_kv=32, n_ctx=4096)
LLAMA2_7B_STEM = "llama2-7b-random"
_POOL = 1 << 24  # normals drawn once for the 7B shape, from which each tensor takes a seeded window


@functools.cache
def _pool(seed: int) -> np.ndarray:
    return random_tensor((_POOL,), seed, -1)


def pooled_random_tensor(shape: tuple[int, ...], seed: int, index: int) -> np.ndarray:
    """Like random_tensor, but windows of one pool of 2^24 normals (a 7B model's 6.7e9 draws would take
    minutes; speed benchmarks need realistic magnitudes, not independent values)."""
    pool = _pool(seed)
    n = int(np.prod(shape))
    start = np.random.default_rng([seed, index]).integers(0, _POOL)
    return np.resize(np.roll(pool, -int(start)), n).reshape(shape)


def random_tensor(shape: tuple[int, ...], seed: int, index: int) -> np.ndarray:
    """Normal(0, 0.02) float32, from a generator seeded by (seed, tensor index): reproducible tensor by tensor."""
    rng = np.random.default_rng([seed, index % (1 << 32)])
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= np.float32(0.02)
    return x


def write_tinyllama_f16(path: Path, vocab_path: Path, seed: int, base: LlamaShape | None = None) -> None:
    """The F16 file: random 2-D weights in F16, norms 1.0 in F32, the vocab file's tokenizer metadata.
    base: the shape (default TinyLlama-1.1B's); the 7B shape draws its weights from a pool."""
    vocab = GGUFReader(vocab_path)
    tok_field = vocab.fields.get("tokenizer.ggml.tokens")
    if tok_field is None:
        sys.exit(f"error: {vocab_path} has no tokenizer.ggml.tokens")
    n_vocab = len(tok_field.data)
    base = base or LlamaShape()
    shape = dataclasses.replace(base, n_vocab=n_vocab)
    draw = pooled_random_tensor if base == LLAMA2_7B else random_tensor
    if n_vocab != LlamaShape.n_vocab:
        log(f"note: {vocab_path.name} has {n_vocab} tokens; the embedding and output get {n_vocab} rows")

    w = GGUFWriter(None, "llama")
    w.add_type("model")
    w.add_name("Llama-2-7B shape, random weights" if base == LLAMA2_7B else "TinyLlama-1.1B shape, random weights")
    w.add_block_count(shape.n_layers)
    w.add_context_length(shape.n_ctx)
    w.add_embedding_length(shape.n_embd)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_rope_freq_base(shape.rope_freq_base)
    w.add_layer_norm_rms_eps(shape.rms_eps)
    w.add_file_type(FILE_TYPES["F16"])
    w.add_vocab_size(shape.n_vocab)
    w.add_rope_dimension_count(shape.head_dim)
    for key, field in vocab.fields.items():
        if key.startswith("tokenizer."):
            copy_field(w, field)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tensors = []
    for index, (name, shp) in enumerate(shape.tensors()):
        if len(shp) == 1:
            tensors.append(
                OutTensor(name, shp, GGMLQuantizationType.F32, 4 * shp[0], lambda s=shp: np.ones(s, np.float32))
            )
        else:
            qt = GGMLQuantizationType.F16
            make = lambda s=shp, i=index: draw(s, seed, i).astype(np.float16)  # noqa: E731
            tensors.append(OutTensor(name, shp, qt, tensor_nbytes(shp, qt), make))
    write_streaming(path, w, tensors, path.name)


def requantize(src: Path, dst: Path, target: str, name: str | None = None) -> None:
    """A copy of src with every 2-D weight matrix in the target type (dequantized with gguf-py first when it is
    in another type), 1-D tensors unchanged, all metadata copied and general.file_type set."""
    qtype = QTYPES[target]
    reader = GGUFReader(src)
    w = GGUFWriter(None, "llama")  # adds general.architecture; the source's copy is skipped below
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == "general.file_type":
            w.add_file_type(FILE_TYPES[target])
        elif key == "general.name" and name:
            w.add_name(name)
        else:
            copy_field(w, field)
    if "general.file_type" not in reader.fields:
        w.add_file_type(FILE_TYPES[target])
    if "general.quantization_version" not in reader.fields:
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tensors = []
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # numpy order
        if len(shape) == 1 or t.tensor_type == qtype:
            tensors.append(OutTensor(t.name, shape, t.tensor_type, int(t.n_bytes), lambda t=t: t.data))
        else:

            def make(t: Any = t) -> np.ndarray:
                return quantize(dequantize(t.data, t.tensor_type), qtype)

            tensors.append(OutTensor(t.name, shape, qtype, tensor_nbytes(shape, qtype), make))
    write_streaming(dst, w, tensors, dst.name)


def out_path(out_dir: Path, stem: str, type_name: str) -> Path:
    return out_dir / f"{stem}.{type_name}.gguf"


def wanted(path: Path, force: bool) -> bool:
    """Whether to (re)write path: it is missing, or --force."""
    if path.exists() and not force:
        log(f"{path} exists, skipped (--force rewrites it)")
        return False
    return True


def cmd_tinyllama(args: argparse.Namespace) -> None:
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    f16 = out_path(out_dir, TINYLLAMA_STEM, "F16")
    if wanted(f16, args.force):
        vocab = Path(args.vocab) if args.vocab else fetch_spm_vocab()
        if not vocab.exists():
            sys.exit(f"error: {vocab}: no such file")
        write_tinyllama_f16(f16, vocab, args.seed)
    for target in args.types:
        dst = out_path(out_dir, TINYLLAMA_STEM, target)
        if wanted(dst, args.force):
            requantize(f16, dst, target)


def cmd_llama2_7b(args: argparse.Namespace) -> None:
    """The 7B shape's F16 file, then each type with `llamette quantize` (gguf-py's numpy quantizer would take
    an hour at this size); any llama-quantize type name works."""
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    f16 = out_path(out_dir, LLAMA2_7B_STEM, "F16")
    if wanted(f16, args.force):
        write_tinyllama_f16(f16, Path(args.vocab) if args.vocab else fetch_spm_vocab(), args.seed, LLAMA2_7B)
    for target in args.types:
        dst = out_path(out_dir, LLAMA2_7B_STEM, target)
        if target != "F16" and wanted(dst, args.force):
            cmd = [sys.executable, "-m", "llamette", "quantize", str(f16), str(dst), target]
            if subprocess.run(cmd).returncode:
                sys.exit(f"error: quantizing to {target} failed")


def cmd_smollm2(args: argparse.Namespace) -> None:
    from llamette.default_model import default_model_path

    src = Path(args.source) if args.source else default_model_path()
    if not src.exists():
        sys.exit(f"error: {src}: no such file")
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for target in args.types:
        dst = out_path(out_dir, SMOLLM2_STEM, target)
        if wanted(dst, args.force):
            requantize(src, dst, target)


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="model", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="default: benchmarks/models")
        sp.add_argument("--types", nargs="+", choices=list(QTYPES), default=["Q4_0", "Q8_0"])
        sp.add_argument("--force", action="store_true", help="rewrite files that exist")

    t = sub.add_parser("tinyllama", help="TinyLlama-1.1B shapes, random weights: F16, then Q4_0 and Q8_0")
    common(t)
    t.add_argument("--vocab", help=f"GGUF file whose tokenizer.* metadata to copy (default: llama.cpp's {SPM_VOCAB})")
    t.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("llama2-7b", help="Llama-2-7B shapes, random weights: F16, then llamette quantize")
    b.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="default: benchmarks/models")
    b.add_argument("--types", nargs="*", default=["Q4_0", "Q4_K_M", "Q8_0"], help="llama-quantize type names")
    b.add_argument("--force", action="store_true", help="rewrite files that exist")
    b.add_argument("--vocab", help=f"GGUF file whose tokenizer.* metadata to copy (default: llama.cpp's {SPM_VOCAB})")
    b.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("smollm2", help="the default model (SmolLM2-135M-Instruct Q4_1) re-quantized")
    common(s)
    s.add_argument("--source", help="model to re-quantize (default: llamette's default model)")
    return p.parse_args(argv)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if args.model == "tinyllama":
        cmd_tinyllama(args)
    elif args.model == "llama2-7b":
        cmd_llama2_7b(args)
    else:
        cmd_smollm2(args)
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
