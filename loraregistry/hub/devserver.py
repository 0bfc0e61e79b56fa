"""A Hub-API-compatible HTTP server, in memory: for tests and the demo (127.0.0.1 only, no auth by default).

Routes (paths as in huggingface_hub's hf_api.py / _commit_api.py / lfs.py / file_download.py):

* ``POST /api/repos/create`` / ``/api/repos/delete``, ``POST /api/validate-yaml``
* ``POST /api/models/{repo}/preupload/{rev}``, ``POST /api/models/{repo}/commit/{rev}`` (NDJSON)
* ``POST /{repo}.git/info/lfs/objects/batch``, ``PUT /lfs/upload/{oid}``, ``POST /lfs/verify/{oid}``
* ``GET /api/models`` (search, filter, limit), ``GET /api/models/{repo}[/revision/{rev}]``
* ``GET /api/models/{repo}/tree/{rev}[/{path}]``, ``POST /api/models/{repo}/paths-info/{rev}``,
  ``GET /api/models/{repo}/refs``
* ``HEAD|GET /{repo}/resolve/{rev}/{path}`` with ``Range``, ``X-Repo-Commit``, ``ETag``, and for LFS files
  ``X-Linked-Etag`` / ``X-Linked-Size`` (served directly, no CDN redirect).

Errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound) like the Hub, so
huggingface_hub raises its specific exceptions. Knobs for failure tests: ``token`` (required bearer token),
``forbid_writes`` (403), ``truncate`` (close mid-body), ``corrupt`` (serve other bytes of the same size),
``bytes_served`` (resolve requests: path, Range, bytes sent) and ``commits`` (commit POSTs that landed).

``state.hostile`` (a ``Hostile``) turns it into the server an attacker would run: ETags and commit shas
that are paths, another commit than the one asked for, bodies that never end, a model info of gigabytes,
error messages that echo the ``Authorization`` header. Each knob is off by default.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".png", ".jpg", ".jpeg", ".webp", ".bin")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class StoredFile:
    size: int
    data: bytes | None = None  # regular git file
    lfs_oid: str | None = None  # LFS file: content lives in the server's object store

    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.lfs_oid}\nsize {self.size}\n".encode()

    @property
    def git_oid(self) -> str:
        return git_blob_oid(self.pointer() if self.lfs_oid else self.data or b"")


@dataclass
class Commit:
    sha: str
    files: dict[str, StoredFile]
    message: str


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        sha = self.branches.get(rev, rev)
        return self.commits.get(sha)


@dataclass
class Hostile:
    """What a malicious endpoint does; tests set the fields they need."""

    linked_etag: str | None = None  # sent as X-Linked-Etag and ETag of every LFS file (e.g. "../../victim")
    commit_sha: str | None = None  # model_info's "sha" (e.g. "../../../../tmp/evil_ref")
    repo_commit: str | None = None  # X-Repo-Commit of resolve answers
    endless_body: bool = False  # resolve answers keep sending past the declared size (no Content-Length)
    model_info_bytes: int | None = None  # model_info answers with a JSON document of this size...
    model_info_declared: bool = True  # ...announced in Content-Length (else streamed until the client leaves)
    echo_authorization: bool = False  # every answer is a 400 whose message repeats the Authorization header
    redirect_downloads_to: str | None = None  # resolve answers 302 to this origin (same path), like a CDN
    commit_oid: str | None = None  # the commitOid a commit POST answers with
    commit_answer_bytes: int | None = None  # a commit POST answers with a JSON document this size (no length)
    trickle_model_info: bool = False  # model_info sends a byte every 50 ms, for ever (until the client leaves)
    body_bytes_sent: int = 0  # what the endless bodies and huge JSON documents put on the wire


class HubState:
    def __init__(self) -> None:
        self.hostile = Hostile()
        self.lock = threading.Lock()
        self.repos: dict[str, Repo] = {}
        self.objects: dict[str, bytes] = {}
        self.token: str | None = None
        self.forbid_writes = False
        self.truncate: set[str] = set()
        self.corrupt: set[str] = set()
        self.bytes_served: list[tuple[str, str | None, int]] = []
        self.commits: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.authorized: list[tuple[str, str, bool]] = []  # (Host, path, whether an Authorization header came)

    def add_files(self, repo_id: str, files: dict[str, bytes], message: str = "add files") -> str:
        """Commit files directly (test setup; no validation, so fixtures can hold hostile names)."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repo(repo_id))
            return self._commit(repo, "main", files, {}, message)

    def _commit(self, repo: Repo, branch: str, regular: dict[str, bytes], lfs: dict[str, StoredFile],
                message: str, deleted: tuple[str, ...] = ()) -> str:
        parent = repo.resolve(branch)
        files = dict(parent.files) if parent else {}
        for path in deleted:
            files.pop(path, None)
        for path, data in regular.items():
            if path.endswith(LFS_SUFFIXES):
                oid = hashlib.sha256(data).hexdigest()
                self.objects[oid] = data
                files[path] = StoredFile(size=len(data), lfs_oid=oid)
            else:
                files[path] = StoredFile(size=len(data), data=data)
        files.update(lfs)
        sha = hashlib.sha1(f"{repo.repo_id}{time.time_ns()}{len(repo.commits)}{message}".encode()).hexdigest()
        repo.commits[sha] = Commit(sha, files, message)
        repo.branches[branch] = sha
        return sha

    def read(self, repo_id: str, path: str, rev: str = "main") -> bytes:
        commit = self.repos[repo_id].resolve(rev)
        stored = commit.files[path]
        return self.objects[stored.lfs_oid] if stored.lfs_oid else stored.data or b""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without TCP_NODELAY, delayed ACKs add ~40 ms per request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # --- plumbing ----------------------------------------------------------------------------------

    @property
    def state(self) -> HubState:
        return self.server.state

    @property
    def base(self) -> str:
        return f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json({"error": message}, status, headers)

    def _authorized(self, write: bool) -> bool:
        auth = self.headers.get("Authorization", "")
        if self.state.token is not None and (write or auth) and auth != f"Bearer {self.state.token}":
            self._error(401, None, "Invalid credentials in Authorization header")
            return False
        if write and self.state.forbid_writes:
            self._error(403, None, "You don't have the rights to write to this repo")
            return False
        return True

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        return repo

    def _commit_at(self, repo: Repo, rev: str) -> Commit | None:
        commit = repo.resolve(unquote(rev))
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return commit

    # --- dispatch ----------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        self.state.requests.append((method, path))
        self.state.authorized.append((self.headers.get("Host", ""), path, "Authorization" in self.headers))
        write = method in ("POST", "PUT") and not path.endswith(("/paths-info", "/validate-yaml")) \
            and "/paths-info/" not in path
        body = self._body() if method in ("POST", "PUT") else b""
        if not self._authorized(write):
            return
        if self.state.hostile.echo_authorization:
            echoed = f"bad request; you sent Authorization: {self.headers.get('Authorization', '')}"
            self._json({"error": echoed}, 400, {"X-Error-Message": echoed})
            return
        repo = r"(?P<repo>[^/]+/[^/]+)"
        routes = [
            ("POST", r"/api/repos/create", self.create_repo),
            ("POST", r"/api/repos/delete", self.delete_repo),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("POST", rf"/api/models/{repo}/preupload/(?P<rev>.+)", self.preupload),
            ("POST", rf"/api/models/{repo}/commit/(?P<rev>.+)", self.commit),
            ("POST", rf"/{repo}\.git/info/lfs/objects/batch", self.lfs_batch),
            ("PUT", r"/lfs/upload/(?P<oid>[0-9a-f]{64})", self.lfs_upload),
            ("POST", r"/lfs/verify/(?P<oid>[0-9a-f]{64})", self.lfs_verify),
            ("GET", r"/api/models", self.list_models),
            ("GET", rf"/api/models/{repo}/refs", self.refs),
            ("GET", rf"/api/models/{repo}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", self.tree),
            ("POST", rf"/api/models/{repo}/paths-info/(?P<rev>.+)", self.paths_info),
            ("GET", rf"/api/models/{repo}/revision/(?P<rev>.+)", self.model_info),
            ("GET", rf"/api/models/{repo}", self.model_info),
            ("HEAD", rf"/{repo}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self.resolve),
            ("GET", rf"/{repo}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self.resolve),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                handler(body=body, query=query, **match.groupdict())
                return
        self._error(404, None, f"no route {method} {path}")

    # --- repos ------------------------------------------------------------------------------------

    def create_repo(self, body: bytes, **_) -> None:
        payload = json.loads(body)
        repo_id = f"{payload.get('organization')}/{payload['name']}"
        with self.state.lock:
            if repo_id in self.state.repos:  # like the Hub, a 409 still names the repo's url
                self._json({"error": "You already created this model repo", "url": f"{self.base}/{repo_id}"}, 409)
                return
            repo = Repo(repo_id, private=payload.get("visibility") == "private")
            self.state.repos[repo_id] = repo
            # Like the Hub: a new repo starts with one commit holding .gitattributes.
            self.state._commit(repo, "main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs\n"},
                               {}, "initial commit")
        self._json({"url": f"{self.base}/{repo_id}", "name": repo_id})

    def delete_repo(self, body: bytes, **_) -> None:
        payload = json.loads(body)
        with self.state.lock:
            self.state.repos.pop(f"{payload.get('organization')}/{payload['name']}", None)
        self._json({})

    def validate_yaml(self, body: bytes, **_) -> None:
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        try:
            data = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as exc:
            self._json({"errors": [{"message": str(exc)}], "warnings": []}, 400)
            return
        if not isinstance(data, dict):
            self._json({"errors": [{"message": "metadata is not a mapping"}], "warnings": []}, 400)
            return
        self._json({"errors": [], "warnings": []})

    # --- uploads -----------------------------------------------------------------------------------

    def preupload(self, body: bytes, repo: str, rev: str, **_) -> None:
        if self._repo(repo) is None:
            return
        files = json.loads(body)["files"]
        modes = [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                  "shouldIgnore": False, "oid": None} for f in files]
        self._json({"files": modes})

    def lfs_batch(self, body: bytes, repo: str, **_) -> None:
        if self._repo(repo) is None:
            return
        objects = []
        for obj in json.loads(body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.objects:
                entry["actions"] = {"upload": {"href": f"{self.base}/lfs/upload/{obj['oid']}"},
                                    "verify": {"href": f"{self.base}/lfs/verify/{obj['oid']}"}}
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_upload(self, body: bytes, oid: str, **_) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            self._error(400, None, "content does not match its oid")
            return
        with self.state.lock:
            self.state.objects[oid] = body
        self._send(200)

    def lfs_verify(self, body: bytes, oid: str, **_) -> None:
        payload = json.loads(body)
        data = self.state.objects.get(oid)
        if data is None or len(data) != payload.get("size"):
            self._error(404, None, "object not uploaded")
            return
        self._json({})

    def commit(self, body: bytes, repo: str, rev: str, **_) -> None:
        target = self._repo(repo)
        if target is None:
            return
        branch = unquote(rev)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        regular: dict[str, bytes] = {}
        lfs: dict[str, StoredFile] = {}
        deleted: list[str] = []
        for item in lines:
            value = item["value"]
            if item["key"] == "file":
                regular[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.state.objects:
                    self._error(400, None, f"LFS object {value['oid']} was not uploaded")
                    return
                lfs[value["path"]] = StoredFile(size=len(self.state.objects[value["oid"]]), lfs_oid=value["oid"])
            elif item["key"] in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
        with self.state.lock:
            if branch not in target.branches and target.branches:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
                return
            sha = self.state._commit(target, branch, regular, lfs, header["summary"], tuple(deleted))
            self.state.commits.append(sha)
        if self.state.hostile.commit_answer_bytes is not None:
            self._huge_json(self.state.hostile.commit_answer_bytes, declared=False)
            return
        oid = self.state.hostile.commit_oid or sha
        self._json({"commitOid": oid, "commitUrl": f"{self.base}/{repo}/commit/{sha}", "pullRequestUrl": None})

    # --- reads ---------------------------------------------------------------------------------------

    def _file_json(self, path: str, stored: StoredFile) -> dict:
        item = {"type": "file", "oid": stored.git_oid, "size": stored.size, "path": path}
        if stored.lfs_oid:
            item["lfs"] = {"oid": stored.lfs_oid, "size": stored.size, "pointerSize": len(stored.pointer())}
        return item

    def _model_json(self, repo: Repo, commit: Commit, blobs: bool) -> dict:
        card: dict = {}
        readme = commit.files.get("README.md")
        if readme is not None and readme.data:
            match = re.match(r"^---\n(.*?)\n---\n", readme.data.decode("utf-8", "replace"), re.S)
            card = (yaml.safe_load(match.group(1)) or {}) if match else {}
        siblings = []
        for path, stored in sorted(commit.files.items()):
            sibling: dict = {"rfilename": path}
            if blobs:
                sibling.update(size=stored.size, blobId=stored.git_oid)
                if stored.lfs_oid:
                    sibling["lfs"] = {"sha256": stored.lfs_oid, "size": stored.size,
                                      "pointerSize": len(stored.pointer())}
            siblings.append(sibling)
        return {"id": repo.repo_id, "_id": repo.repo_id, "sha": commit.sha, "private": repo.private,
                "tags": list(card.get("tags") or []), "cardData": card or None, "siblings": siblings,
                "downloads": 0, "likes": 0, "library_name": card.get("library_name"),
                "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z"}

    def model_info(self, repo: str, query: dict, rev: str = "main", **_) -> None:
        target = self._repo(repo)
        commit = target and self._commit_at(target, rev)
        if not commit:
            return
        hostile = self.state.hostile
        if hostile.trickle_model_info:
            self._trickle()
            return
        if hostile.model_info_bytes is not None:
            self._huge_json(hostile.model_info_bytes, declared=hostile.model_info_declared)
            return
        info = self._model_json(target, commit, blobs="blobs" in query)
        if hostile.commit_sha is not None:
            info["sha"] = hostile.commit_sha
        self._json(info)

    def _huge_json(self, size: int, *, declared: bool) -> None:
        """A valid JSON object of ``size`` bytes, written 1 MiB at a time until done or the client leaves."""
        head, tail = b'{"id": "x/y", "padding": "', b'"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if declared:
            self.send_header("Content-Length", str(size))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self._write_until_gone(head, size - len(head) - len(tail), tail)

    def _trickle(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(b'{"id": "')
            for _ in range(200):  # 10 s at most, so a client without a deadline cannot hang a test run
                self.wfile.write(b"x")
                self.wfile.flush()
                self.state.hostile.body_bytes_sent += 1
                time.sleep(0.05)
        except OSError:
            pass

    def _write_until_gone(self, head: bytes, filler: int, tail: bytes = b"") -> None:
        block = b"x" * (1 << 20)
        try:
            self.wfile.write(head)
            while filler > 0:
                chunk = block[: min(filler, len(block))]
                self.wfile.write(chunk)
                self.state.hostile.body_bytes_sent += len(chunk)
                filler -= len(chunk)
            self.wfile.write(tail)
            self.wfile.flush()
        except OSError:  # the client hung up: what a bounded client does
            self.close_connection = True

    def list_models(self, query: dict, **_) -> None:
        search = (query.get("search") or [""])[0].lower()
        wanted = set(query.get("filter") or [])
        limit = int((query.get("limit") or ["1000"])[0])
        out = []
        for repo in sorted(self.state.repos.values(), key=lambda r: r.repo_id):
            commit = repo.resolve("main")
            if repo.private or commit is None:
                continue
            model = self._model_json(repo, commit, blobs=False)
            if search in repo.repo_id.lower() and wanted <= set(model["tags"]):
                out.append(model)
        self._json(out[:limit])

    def refs(self, repo: str, **_) -> None:
        target = self._repo(repo)
        if target:
            self._json({"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha}
                                     for b, sha in target.branches.items()], "tags": [], "converts": []})

    def tree(self, repo: str, rev: str, sub: str | None = None, **_) -> None:
        target = self._repo(repo)
        commit = target and self._commit_at(target, rev)
        if commit:
            prefix = f"{sub.strip('/')}/" if sub else ""
            self._json([self._file_json(p, s) for p, s in sorted(commit.files.items()) if p.startswith(prefix)])

    def paths_info(self, body: bytes, repo: str, rev: str, **_) -> None:
        target = self._repo(repo)
        commit = target and self._commit_at(target, rev)
        if commit:
            paths = parse_qs(body.decode())["paths"]
            self._json([self._file_json(p, commit.files[p]) for p in paths if p in commit.files])

    def resolve(self, repo: str, rev: str, file: str, **_) -> None:
        target = self._repo(repo)
        commit = target and self._commit_at(target, rev)
        if not commit:
            return
        stored = commit.files.get(file)
        if stored is None:
            self._error(404, "EntryNotFound", f"{file} does not exist", )
            return
        data = self.state.objects[stored.lfs_oid] if stored.lfs_oid else stored.data or b""
        if file in self.state.corrupt:
            data = bytes(b ^ 0xFF for b in data)
        hostile = self.state.hostile
        origin = f"{self.headers.get('Host', '')}"
        if hostile.redirect_downloads_to and not hostile.redirect_downloads_to.endswith(origin):
            self._send(302, headers={"Location": f"{hostile.redirect_downloads_to}{self.path}",
                                     "X-Repo-Commit": hostile.repo_commit or commit.sha})
            return
        headers = {"X-Repo-Commit": hostile.repo_commit or commit.sha, "Accept-Ranges": "bytes",
                   "ETag": f'"{stored.lfs_oid or stored.git_oid}"'}
        if stored.lfs_oid:
            etag = hostile.linked_etag or stored.lfs_oid
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(stored.size), "ETag": f'"{etag}"'})
        if hostile.endless_body and self.command == "GET" and not self.headers.get("Range"):
            self._endless(headers)
            return
        status, start, end = 200, 0, len(data)
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if wanted:
            start = int(wanted.group(1))
            end = min(int(wanted.group(2)) + 1 if wanted.group(2) else len(data), len(data))
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        chunk = data[start:end]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        if file in self.state.truncate:  # the connection drops halfway through the body
            chunk = chunk[: len(chunk) // 2]
            self.close_connection = True
        # Recorded before the body goes out: once the client has the bytes it may look at this list at once.
        self.state.bytes_served.append((file, self.headers.get("Range"), len(chunk)))
        self.wfile.write(chunk)
        self.wfile.flush()


    def _endless(self, headers: dict[str, str]) -> None:
        """The body never ends (no Content-Length, 1 GiB at most so a broken client cannot hang a test)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.close_connection = True
        self._write_until_gone(b"", 1 << 30)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-answer is what the hostile tests expect: no traceback on stderr."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class HubServer:
    """``with HubServer() as hub: hub.endpoint``; binds 127.0.0.1 on a free port."""

    def __init__(self) -> None:
        self.state = HubState()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
