"""A small Hugging Face hub on 127.0.0.1, serving the HTTP endpoints huggingface_hub calls.

- GET  /api/models/{repo}[/revision/{rev}]           model info (sha, siblings with sizes, gated)
- GET  /api/models/{repo}/tree/{rev}[/{path}]         tree listing
- HEAD /{repo}/resolve/{rev}/{file}                   X-Repo-Commit, ETag / X-Linked-Etag, sizes
- GET  /{repo}/resolve/{rev}/{file}                   the bytes, with Range support (206)

Errors carry the hub's X-Error-Code header (RepoNotFound, RevisionNotFound, EntryNotFound,
GatedRepo) and status (401 without a token on a gated repo, 403 with a token whose owner has not
accepted the license), which is how huggingface_hub tells them apart.

Test knobs: `cut[path] = n` drops the connection after n bytes of a download that starts at 0;
`stall[path] = n` sends n bytes, sets `stalled` and holds the connection until `release` is set;
`requests` logs (method, path, Range header) for every request.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".model")


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = ""
    gated: bool = False
    accepted_tokens: set[str] = field(default_factory=set)

    def __post_init__(self):
        if not self.sha:
            h = hashlib.sha1()
            for name in sorted(self.files):
                h.update(name.encode() + hashlib.sha1(self.files[name]).digest())
            self.sha = h.hexdigest()


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class FakeHub:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.cut: dict[str, int] = {}
        self.stall: dict[str, int] = {}
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.requests: list[tuple[str, str, str | None]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def downloads(self, filename: str) -> list[str | None]:
        """The Range header of every GET of `filename` (None for a whole-file GET)."""
        return [rng for method, path, rng in self.requests if method == "GET" and path.endswith("/" + filename)
                and "/resolve/" in path]

    def _handler(hub):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._route(body=False)

            def do_GET(self):
                self._route(body=True)

            def _route(self, body: bool):
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path, self.headers.get("Range")))
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
                if m:
                    return self._info(m.group(1), m.group(2) or "main")
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
                if m:
                    return self._tree(m.group(1), m.group(2), m.group(3) or "")
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if m:
                    return self._resolve(m.group(1), m.group(2), m.group(3), body)
                self._error(404, "RepoNotFound", "not found")

            def _repo(self, repo_id: str, rev: str) -> Repo | None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error(404, "RepoNotFound", "Repository not found")
                    return None
                if rev not in ("main", repo.sha):
                    self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
                    return None
                return repo

            def _info(self, repo_id, rev):
                repo = self._repo(repo_id, rev)
                if repo is None:
                    return
                siblings = [{"rfilename": name, "size": len(data), "blobId": _blob_id(data),
                             **({"lfs": _lfs(data, "sha256")} if name.endswith(LFS_SUFFIXES) else {})}
                            for name, data in sorted(repo.files.items())]
                self._json({"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                            "gated": "manual" if repo.gated else False, "siblings": siblings})

            def _tree(self, repo_id, rev, prefix):
                repo = self._repo(repo_id, rev)
                if repo is None:
                    return
                entries = [{"type": "file", "path": name, "size": len(data), "oid": _blob_id(data),
                            **({"lfs": _lfs(data)} if name.endswith(LFS_SUFFIXES) else {})}
                           for name, data in sorted(repo.files.items()) if name.startswith(prefix)]
                self._json(entries)

            def _resolve(self, repo_id, rev, filename, body):
                repo = self._repo(repo_id, rev)
                if repo is None:
                    return
                if repo.gated:
                    auth = self.headers.get("Authorization", "")
                    token = auth.removeprefix("Bearer ").strip()
                    if not token:
                        return self._error(401, "GatedRepo", "Access to model is restricted. You must have access "
                                           "to it and be authenticated to access it. Please log in.")
                    if token not in repo.accepted_tokens:
                        return self._error(403, "GatedRepo", "Access to model is restricted and you are not in "
                                           "the authorized list.")
                data = repo.files.get(filename)
                if data is None:
                    return self._error(404, "EntryNotFound", "Entry not found", commit=repo.sha)
                lfs = filename.endswith(LFS_SUFFIXES)
                etag = hashlib.sha256(data).hexdigest() if lfs else _blob_id(data)
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and body:
                    m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                    if m:
                        start, status = int(m.group(1)), 206
                self.send_response(status)
                self.send_header("X-Repo-Commit", repo.sha)
                self.send_header("ETag", f'"{_blob_id(data)}"')
                if lfs:
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                cut = hub.cut.get(filename, hub.stall.get(filename))
                if cut is not None and start == 0:
                    self.wfile.write(data[:cut])
                    self.wfile.flush()
                    if filename in hub.stall:
                        hub.stalled.set()
                        hub.release.wait(60)
                    self.close_connection = True
                    try:
                        self.connection.shutdown(2)
                    except OSError:  # the client went first
                        pass
                    return
                self.wfile.write(data[start:])

            def _json(self, obj):
                raw = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(raw)

            def _error(self, status, code, message, commit=None):
                raw = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(raw)

        return Handler


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs(data: bytes, key: str = "oid") -> dict:
    """LFS pointer info: model info calls the hash "sha256", the tree listing "oid"."""
    return {key: hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
