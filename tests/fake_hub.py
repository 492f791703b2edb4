"""A local HTTP server that imitates the Hugging Face hub's file API, for the download tests (no network).

It answers what huggingface_hub asks when it lists a repository, reads file metadata and downloads: the tree
and paths-info APIs, HEAD and GET on /{repo}/resolve/{revision}/{file} with LFS headers and Range requests.
Knobs: `cut_after` drops the connection once after that many bytes of a download (the client must resume with
a Range request), `corrupt` serves different bytes than the advertised SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        self.cut_after: int | None = None
        self.corrupt: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._serve(self, head=True)

            def do_GET(self) -> None:
                hub._serve(self, head=False)

            def do_POST(self) -> None:
                hub._serve(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- helpers ------------------------------------------------------------------------------------------

    def _entry(self, repo: str, name: str) -> dict:
        data = self.repos[repo][name]
        sha = hashlib.sha256(data).hexdigest()
        return {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest(),
                "lfs": {"oid": sha, "sha256": sha, "size": len(data), "pointerSize": 134}}  # fmt: skip

    def _json(self, h: BaseHTTPRequestHandler, obj, head: bool, status: int = 200) -> None:
        body = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.send_header("X-Repo-Commit", COMMIT)
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlparse(h.path)
        path = unquote(url.path)
        self.requests.append((h.command, path, h.headers.get("Range")))
        if h.command == "POST":
            length = int(h.headers.get("Content-Length") or 0)
            form = h.rfile.read(length).decode()
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                return self._json(h, {"error": "Repository not found"}, head, 404)
            rest = parts[4:]
            if rest[:1] == ["tree"]:
                return self._json(h, [self._entry(repo, n) for n in sorted(self.repos[repo])], head)
            if rest[:1] == ["paths-info"]:
                fields = parse_qs(form) if h.command == "POST" else parse_qs(url.query)
                wanted = fields.get("paths", [])
                if not wanted and h.command == "POST" and form.startswith("{"):
                    wanted = json.loads(form).get("paths", [])
                return self._json(h, [self._entry(repo, n) for n in wanted if n in self.repos[repo]], head)
            files = [{"rfilename": n} for n in sorted(self.repos[repo])]
            return self._json(h, {"id": repo, "modelId": repo, "sha": COMMIT, "siblings": files}, head)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, name = "/".join(parts[:2]), "/".join(parts[4:])
            if repo not in self.repos or name not in self.repos[repo]:
                h.send_response(404)
                h.send_header("X-Error-Code", "EntryNotFound")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return None
            return self._file(h, repo, name, head)
        h.send_response(404)
        h.send_header("Content-Length", "0")
        h.end_headers()
        return None

    def _file(self, h: BaseHTTPRequestHandler, repo: str, name: str, head: bool) -> None:
        data = self.repos[repo][name]
        sha = hashlib.sha256(data).hexdigest()
        served = bytes(b ^ 0xFF for b in data) if name in self.corrupt else data
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
        body = served[start:]
        h.send_response(206 if start else 200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(body)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(served) - 1}/{len(served)}")
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{sha}"')
        h.send_header("X-Linked-Etag", f'"{sha}"')
        h.send_header("X-Linked-Size", str(len(data)))
        h.send_header("X-Repo-Commit", COMMIT)
        h.end_headers()
        if head:
            return
        if self.cut_after is not None and not start and len(body) > self.cut_after:
            cut, self.cut_after = self.cut_after, None  # once
            h.wfile.write(body[:cut])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        h.wfile.write(body)
