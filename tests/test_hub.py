"""`llamette pull`, `-hf` and `list` against a local server that imitates the hub's file API (tests/fake_hub.py):
choosing the file for a quantization tag, the cache, --offline, resuming an interrupted download, rejecting a
file whose SHA-256 does not match."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_path
from fake_hub import FakeHub

from llamette.errors import LlametteError
from llamette.hub import parse_ref, pick_file


def test_refs_and_file_choice() -> None:
    assert parse_ref("owner/name") == ("owner/name", None)
    assert parse_ref("owner/Name-1.5B-GGUF:q4_k_m") == ("owner/Name-1.5B-GGUF", "q4_k_m")
    for bad in ("name", "../etc/passwd", "a/b/c", "owner/name:Q4 K"):
        with pytest.raises(LlametteError, match="repository name|quantization tag"):
            parse_ref(bad)
    files = ["m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "m-Q8_0.gguf", "mmproj-m-f16.gguf", "README.md"]
    assert pick_file(files, None, "r") == "m-Q4_K_M.gguf"
    assert pick_file(files, "q8_0", "r") == "m-Q8_0.gguf"
    assert pick_file(files, "Q4_K_S", "r") == "m-Q4_K_S.gguf"
    assert pick_file(["only.gguf"], None, "r") == "only.gguf"
    with pytest.raises(LlametteError, match="no .gguf file for 'Q2_K'.*m-Q8_0.gguf"):
        pick_file(files, "Q2_K", "r")
    with pytest.raises(LlametteError, match="has no .gguf"):
        pick_file(["README.md"], None, "r")
    with pytest.raises(LlametteError, match="split into 2 files"):
        pick_file(["m-Q4_K_M-00001-of-00002.gguf", "m-Q4_K_M-00002-of-00002.gguf"], None, "r")


@pytest.fixture
def hub(tmp_path):
    big = np.random.default_rng(0).integers(0, 256, 24 << 20, dtype=np.uint8).tobytes()  # > one 10 MiB chunk
    server = FakeHub({
        "acme/tiny-GGUF": {
            "tiny-Q4_0.gguf": tiny_path("Q4_0").read_bytes(),
            "tiny-Q8_0.gguf": tiny_path("Q8_0").read_bytes(),
            "README.md": b"# tiny\n",
        },
        "acme/big-GGUF": {"big-Q4_K_M.gguf": big},
    })  # fmt: skip
    server.home = tmp_path / "hf-home"
    yield server
    server.stop()


def run(hub: FakeHub, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(hub.home), "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run(
        [sys.executable, "-m", "llamette", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_pull_list_offline_and_run(hub) -> None:
    first = run(hub, "pull", "acme/tiny-GGUF:Q8_0")
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.strip())
    assert path.read_bytes() == tiny_path("Q8_0").read_bytes() and str(hub.home) in str(path)
    n_downloads = sum(1 for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p)
    again = run(hub, "pull", "acme/tiny-GGUF:Q8_0")  # cached: no new download
    assert again.returncode == 0 and Path(again.stdout.strip()) == path
    assert sum(1 for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p) == n_downloads
    listing = run(hub, "list")
    assert "acme/tiny-GGUF/tiny-Q8_0.gguf" in listing.stdout and "Q8_0" in listing.stdout and "MiB" in listing.stdout
    hub.stop()  # the hub is gone: --offline still finds the cached file, and runs it
    out = run(hub, "run", "-hf", "acme/tiny-GGUF:Q8_0", "--offline", "-p", "hello", "-n", "4", "--temp", "0")
    assert out.returncode == 0, out.stderr
    assert "using" in out.stderr and "generated: 4 tokens" in out.stderr
    missing = run(hub, "pull", "acme/tiny-GGUF:Q4_0", "--offline")
    assert missing.returncode == 1 and "not in the cache" in missing.stderr and "Traceback" not in missing.stderr


def test_interrupted_download_resumes(hub) -> None:
    hub.cut_after = 12 << 20  # the connection drops once, after 12 MiB
    out = run(hub, "pull", "acme/big-GGUF")
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert path.read_bytes() == hub.repos["acme/big-GGUF"]["big-Q4_K_M.gguf"]
    ranges = [r for m, p, r in hub.requests if m == "GET" and "/resolve/" in p and r]
    assert ranges and ranges[0].startswith("bytes=") and int(ranges[0][6:].split("-")[0]) > 0


def test_wrong_checksum_is_rejected(hub) -> None:
    hub.corrupt.add("tiny-Q4_0.gguf")
    out = run(hub, "pull", "acme/tiny-GGUF:Q4_0")
    assert out.returncode == 1 and "SHA-256 does not match" in out.stderr and "Traceback" not in out.stderr
    assert not [p for p in hub.home.rglob("*tiny-Q4_0*") if p.is_file()]  # nothing left in the cache


def test_hub_errors_are_clear(hub) -> None:
    out = run(hub, "pull", "acme/missing-GGUF")
    assert out.returncode == 1 and "acme/missing-GGUF" in out.stderr and "Traceback" not in out.stderr
    out = run(hub, "pull", "acme/tiny-GGUF:Q2_K")
    assert out.returncode == 1 and "no .gguf file for 'Q2_K'" in out.stderr
    out = run(hub, "run", "-m", "x.gguf", "-hf", "acme/tiny-GGUF", "-p", "x")
    assert out.returncode == 1 and "not both" in out.stderr
