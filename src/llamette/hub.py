"""Models from a Hugging Face-style hub: `llamette pull REPO[:QUANT]`, `-hf REPO[:QUANT]`, `llamette list`.

Downloads go through huggingface_hub (its cache, progress bar, retries that resume an interrupted transfer
with a Range request, HF_ENDPOINT and HF_HOME). On top of it: QUANT picks the GGUF file of that type from
the repository, the finished file's SHA-256 is checked against the hub's LFS checksum (a mismatch deletes
the file and fails), and --offline resolves from the cache only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from llamette.errors import LlametteError

DEFAULT_QUANT = "Q4_K_M"  # as llama.cpp's -hf when no tag is given
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def parse_ref(ref: str) -> tuple[str, str | None]:
    """'owner/name[:QUANT]' -> (repo id, quant tag or None)."""
    repo, _, quant = ref.partition(":")
    if not _REPO.match(repo) or ".." in repo:
        raise LlametteError(
            f"{ref!r} is not a repository name: expected owner/name[:QUANT], e.g. bartowski/model:Q4_K_M"
        )
    if quant and not re.fullmatch(r"[\w.-]+", quant):
        raise LlametteError(f"{ref!r}: the quantization tag {quant!r} is not a name like Q4_K_M")
    return repo, quant or None


def pick_file(files: list[str], quant: str | None, repo: str) -> str:
    """The GGUF file of the repository for the tag: its name contains the tag (not case-sensitive); without a
    tag Q4_K_M if there is one, else the only or first model file. Projector files (mmproj) are skipped."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf") and "mmproj" not in f.lower())
    if not ggufs:
        raise LlametteError(f"{repo}: the repository has no .gguf file")

    def matching(tag: str) -> list[str]:
        pat = re.compile(rf"(^|[^A-Za-z0-9]){re.escape(tag)}([^A-Za-z0-9]|$)", re.IGNORECASE)
        return [f for f in ggufs if pat.search(Path(f).name)]

    if quant is None:
        found = matching(DEFAULT_QUANT) or ggufs
    else:
        found = matching(quant)
        if not found:
            names = ", ".join(Path(f).name for f in ggufs)
            raise LlametteError(f"{repo}: no .gguf file for {quant!r} (the repository has: {names})")
    shards = [f for f in found if re.search(r"-\d{5}-of-\d{5}\.gguf$", f)]
    if shards and len(shards) == len(found) and len(found) > 1:
        raise LlametteError(f"{repo}: {found[0]} is split into {len(found)} files; split models are not supported yet")
    return found[0]


def pull(ref: str, offline: bool = False, progress: bool = True) -> Path:
    """Download (or find in the cache) the GGUF file for ref; returns its local path."""
    try:
        from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    except ImportError:
        raise LlametteError("downloading models needs huggingface_hub: pip install huggingface_hub") from None
    repo, quant = parse_ref(ref)
    try:
        if offline:
            files = cached_files(repo)
            if not files:
                raise LlametteError(
                    f"{repo}: not in the cache and --offline was given (run `llamette pull {ref}` first)"
                )
            try:
                name = pick_file(files, quant, repo)
            except LlametteError as e:
                raise LlametteError(f"{e}; that is, it is not in the cache and --offline was given") from None
            path = try_to_load_from_cache(repo, name)
            if not isinstance(path, str):
                raise LlametteError(f"{repo}/{name}: not in the cache and --offline was given")
            return Path(path)
        entries = {
            f.path: f for f in HfApi().list_repo_tree(repo, recursive=True) if getattr(f, "size", None) is not None
        }
        name = pick_file(list(entries), quant, repo)
        expected = _lfs_sha256(entries[name])
        (enable_progress_bars if progress else disable_progress_bars)()
        path = Path(hf_hub_download(repo, name))
    except LlametteError:
        raise
    except LocalEntryNotFoundError as e:
        raise LlametteError(f"{repo}: cannot reach the hub and the file is not cached ({e})") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise LlametteError(f"{repo}: the hub answered {status}: {str(e).splitlines()[0]}") from None
    except (OSError, ValueError) as e:
        raise LlametteError(f"{repo}: download failed: {e}") from None
    if expected is not None and sha256_file(path) != expected:
        _evict(path)
        raise LlametteError(
            f"{repo}/{name}: the downloaded file's SHA-256 does not match the hub's ({expected[:12]}...): deleted, "
            "try again"
        )
    return path


def _lfs_sha256(entry) -> str | None:
    """The hub's SHA-256 for an LFS file of the repository tree (the checksum to verify), None for git files."""
    lfs = getattr(entry, "lfs", None)
    if lfs is None:
        return None
    sha = lfs.sha256 if hasattr(lfs, "sha256") else lfs.get("sha256")
    return str(sha).lower() if sha else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _evict(path: Path) -> None:
    """Remove a snapshot file and the blob it points to."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)


def cached_files(repo: str) -> list[str]:
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir()
    except Exception:  # no cache directory yet
        return []
    for r in info.repos:
        if r.repo_id == repo and r.repo_type == "model":
            return sorted({str(f.file_path.relative_to(rev.snapshot_path)) for rev in r.revisions for f in rev.files})
    return []


@dataclass
class CachedModel:
    repo: str
    file: str
    size: int
    type: str
    path: Path


def list_cached() -> list[CachedModel]:
    """Every GGUF file in the hub cache, with its size and its type (general.file_type)."""
    from huggingface_hub import scan_cache_dir

    from llamette.gguf.constants import LLAMA_FTYPE_NAMES
    from llamette.gguf.reader import GGUFFile

    try:
        info = scan_cache_dir()
    except Exception:
        return []
    out = []
    for r in info.repos:
        for rev in r.revisions:
            for f in rev.files:
                if not f.file_name.lower().endswith(".gguf"):
                    continue
                try:
                    with GGUFFile(f.file_path) as g:
                        ftype = g.metadata.get("general.file_type")
                        kind = LLAMA_FTYPE_NAMES.get(ftype, "?" if ftype is None else f"type {ftype}")
                except LlametteError:
                    kind = "unreadable"
                rel = str(f.file_path.relative_to(rev.snapshot_path))
                out.append(CachedModel(r.repo_id, rel, f.size_on_disk, kind, f.file_path))
    return sorted(out, key=lambda m: (m.repo, m.file))
