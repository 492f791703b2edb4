"""Shared test fixtures: data paths, the default model, llama.cpp's vocab test files, GGUF rewriting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llamette.gguf.constants import GGML_BLOCK_SIZES, GGMLType, GGUFValueType
from llamette.gguf.reader import GGUFFile

# without an NVIDIA GPU the Triton kernels run under Triton's interpreter (it must be chosen before triton loads)
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny"
SMOLLM2 = DATA / "smollm2"
CACHE = Path(__file__).parent / ".cache"

# llama.cpp's tokenizer test files ship in this sdist (the same llama.cpp commit as the fixtures)
LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"

TINY_MANIFEST = json.loads((TINY / "manifest.json").read_text())
TINY_TYPES = list(TINY_MANIFEST["models"])
SMOLLM2_REFERENCE = json.loads((SMOLLM2 / "reference.json").read_text())


def tiny_path(qtype: str) -> Path:
    return TINY / TINY_MANIFEST["models"][qtype]["file"]


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from llamette.default_model import INSTALL_HINT, default_model_path
    from llamette.errors import LlametteError

    try:
        return default_model_path()
    except LlametteError:
        pytest.fail(f"the default model is not installed; the test setup installs it with: {INSTALL_HINT}")


@pytest.fixture(scope="session")
def smollm2(smollm2_path: Path):
    from llamette.loader import load

    return load(smollm2_path)


def _fetch_vocab_files() -> Path:
    """llama.cpp's models/ggml-vocab-* from the llama-cpp-python sdist, downloaded once into tests/.cache."""
    _fetch_llama_cpp_files()
    return CACHE / "llama-cpp-vocab"


def llama_cpp_converter_dir() -> Path:
    """llama.cpp's convert_hf_to_gguf.py with its conversion/ and gguf-py/ (same sdist, same download)."""
    _fetch_llama_cpp_files()
    return CACHE / "llama-cpp-convert"


def _fetch_llama_cpp_files() -> None:
    """One download of the llama-cpp-python sdist for everything the tests take from it."""
    vocab, convert = CACHE / "llama-cpp-vocab", CACHE / "llama-cpp-convert"
    if (vocab / ".complete").exists() and (convert / ".complete").exists():
        return
    vocab.mkdir(parents=True, exist_ok=True)
    convert.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            LLAMA_CPP_SDIST,
            "-d",
            tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise RuntimeError(f"could not download {LLAMA_CPP_SDIST} for its vocab files:\n{proc.stderr[-2000:]}")
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                name = Path(member.name).name
                if "/vendor/llama.cpp/models/" in member.name and name.startswith("ggml-vocab-"):
                    (vocab / name).write_bytes(tar.extractfile(member).read())
                _, sep, rel = member.name.partition("/vendor/llama.cpp/")
                if sep and (rel == "convert_hf_to_gguf.py" or rel.startswith(("conversion/", "gguf-py/gguf/"))):
                    (convert / rel).parent.mkdir(parents=True, exist_ok=True)
                    (convert / rel).write_bytes(tar.extractfile(member).read())
    (vocab / ".complete").touch()
    (convert / ".complete").touch()


@pytest.fixture(scope="session")
def vocab_dir() -> Path:
    return _fetch_vocab_files()


def read_vocab_cases(gguf_path: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's test-tokenizer-0 format: .inp holds inputs separated by a marker line, .out one id list each."""
    inputs = Path(f"{gguf_path}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = Path(f"{gguf_path}.out").read_text(encoding="utf-8").split("\n")
    return [(text, [int(t) for t in outputs[i].split()]) for i, text in enumerate(inputs)]


# -- writing modified GGUF files for bad-input tests ---------------------------------------------------------

_DTYPE_TO_VTYPE = {
    np.dtype("uint8"): GGUFValueType.UINT8,
    np.dtype("int8"): GGUFValueType.INT8,
    np.dtype("uint16"): GGUFValueType.UINT16,
    np.dtype("int16"): GGUFValueType.INT16,
    np.dtype("uint32"): GGUFValueType.UINT32,
    np.dtype("int32"): GGUFValueType.INT32,
    np.dtype("float32"): GGUFValueType.FLOAT32,
    np.dtype("bool"): GGUFValueType.BOOL,
    np.dtype("uint64"): GGUFValueType.UINT64,
    np.dtype("int64"): GGUFValueType.INT64,
    np.dtype("float64"): GGUFValueType.FLOAT64,
}


def rewrite_gguf(
    src: Path,
    dst: Path,
    arch: str | None = None,
    drop_keys: tuple[str, ...] = (),
    set_keys: dict[str, tuple[Any, GGUFValueType]] | None = None,
    drop_tensors: tuple[str, ...] = (),
    tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """Copy a GGUF file with gguf-py's writer, changing metadata and tensors; tensors given as float32 arrays
    replace (or add) F32 tensors."""
    import gguf

    with GGUFFile(src) as f:
        meta = dict(f.metadata)
        types = dict(f.metadata_types)
        infos = dict(f.tensors)
        raw = {name: np.array(f.tensor_bytes(name)) for name in infos}
    arch = arch or meta["general.architecture"]
    writer = gguf.GGUFWriter(dst, arch)
    for key, value in meta.items():
        if key in drop_keys or key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = gguf.GGUFValueType(int(types[key]))
        sub = None
        if vtype == gguf.GGUFValueType.ARRAY:
            if isinstance(value, np.ndarray):
                sub = gguf.GGUFValueType(int(_DTYPE_TO_VTYPE[value.dtype]))
                value = value.tolist()
            else:
                sub = gguf.GGUFValueType.STRING
        if arch != meta["general.architecture"] and key.startswith(meta["general.architecture"] + "."):
            key = arch + key[len(meta["general.architecture"]) :]
        writer.add_key_value(key, value, vtype, sub)
    for key, (value, vtype) in (set_keys or {}).items():
        writer.add_key_value(key, value, gguf.GGUFValueType(int(vtype)))
    for name, info in infos.items():
        if name in drop_tensors or (tensors and name in tensors):
            continue
        writer.add_tensor(name, raw[name], raw_dtype=gguf.GGMLQuantizationType(int(info.type)))  # byte shape
    for name, array in (tensors or {}).items():
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


# -- random weights for kernel tests ---------------------------------------------------------------------

# byte offsets of each block's half-float scale fields: random bytes there could be inf/nan
_T = GGMLType
SCALE_FIELDS = {
    _T.Q4_0: [0], _T.Q4_1: [0, 2], _T.Q5_0: [0], _T.Q5_1: [0, 2], _T.Q8_0: [0], _T.IQ4_NL: [0],
    _T.Q2_K: [80, 82], _T.Q3_K: [108], _T.Q4_K: [0, 2], _T.Q5_K: [0, 2], _T.Q6_K: [208], _T.IQ4_XS: [0],
}  # fmt: skip


def random_weights(t: GGMLType, rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, bytes per row) of a valid tensor: random bits with finite, moderate block scales."""
    if t == GGMLType.F32:
        return rng.standard_normal((rows, k)).astype(np.float32).view(np.uint8)
    if t == GGMLType.F16:
        return rng.standard_normal((rows, k)).astype(np.float16).view(np.uint8)
    if t == GGMLType.BF16:
        bits = rng.standard_normal((rows, k)).astype(np.float32).view(np.uint32) >> 16
        return bits.astype(np.uint16).view(np.uint8)
    qk, bb = GGML_BLOCK_SIZES[t]
    nb = k // qk
    w = rng.integers(0, 256, (rows, nb, bb), dtype=np.uint8)
    for i, off in enumerate(SCALE_FIELDS[t]):
        d = rng.uniform(0.002, 0.05, (rows, nb)) * (1 if i else rng.choice([-1, 1], (rows, nb)))
        w[:, :, off : off + 2] = d.astype(np.float16).view(np.uint8).reshape(rows, nb, 2)
    return w.reshape(rows, nb * bb)
