"""`lorareg civitai lookup` (issue 16 item 5) against a server on 127.0.0.1 that speaks Civitai's
`/api/v1/model-versions/by-hash/{hash}` with bodies shaped like the documented API (developer.civitai.com,
"Get model version by hash"), including its 404 answer; hostile answers (redirects, huge or non-JSON bodies,
another file's version) are refused; offline says so in one line."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loraregistry import cli
from loraregistry.civitai import CivitaiClient, CivitaiError, CivitaiUnreachable, lookup_files
from loraregistry.hashes import hash_file
from loraregistry.registry import Registry

from .test_registry_scan import adapter


def version_body(sha256: str, *, base: str = "Pony", words=("pnysketch", "sketch style")) -> dict:
    """A model version as the API documents it (fields lorareg reads, plus the ones it ignores)."""
    return {
        "id": 130072, "modelId": 4201, "name": "v1.0", "createdAt": "2024-01-01T00:00:00.000Z",
        "updatedAt": "2024-01-02T00:00:00.000Z", "status": "Published", "trainedWords": list(words),
        "baseModel": base, "baseModelType": "Standard", "earlyAccessTimeFrame": 0, "description": "<p>notes</p>",
        "stats": {"downloadCount": 10, "ratingCount": 1, "rating": 5},
        "model": {"name": "Pony Sketch", "type": "LORA", "nsfw": False, "poi": False},
        "files": [{"id": 1, "sizeKB": 1.5, "name": "pony_sketch.safetensors", "type": "Model",
                   "metadata": {"format": "SafeTensor", "size": None, "fp": None},
                   "hashes": {"AutoV1": "ABCDEF12", "AutoV2": sha256[:10].upper(), "SHA256": sha256.upper(),
                              "CRC32": "00000000", "BLAKE3": "0" * 64, "AutoV3": "0" * 64},
                   "downloadUrl": "https://civitai.com/api/download/models/130072", "primary": True}],
        "images": [{"url": "https://image.civitai.com/xG1nkqKTMzGDvpLrqFT7WA/a/width=450/1.jpeg", "nsfw": "None",
                    "width": 512, "height": 768, "hash": "U5F", "type": "image", "meta": None}],
        "downloadUrl": "https://civitai.com/api/download/models/130072",
    }


class CivitaiServer:
    """Answers by-hash requests from ``versions`` (AutoV2 -> body); ``mode`` makes it misbehave."""

    def __init__(self) -> None:
        self.versions: dict[str, dict] = {}
        self.mode = "ok"
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization header)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Authorization")))
                prefix = "/api/v1/model-versions/by-hash/"
                if outer.mode == "redirect":
                    return self._send(302, b"", {"Location": "http://127.0.0.2:9/steal"})
                if outer.mode == "huge":
                    return self._send(200, b'{"a": "' + b"x" * (5 << 20) + b'"}')
                if outer.mode == "html":
                    return self._send(200, b"<html>Cloudflare</html>", {"Content-Type": "text/html"})
                if outer.mode in ("500", "401", "429"):
                    return self._send(int(outer.mode), b'{"error": "nope"}')
                if not self.path.startswith(prefix):
                    return self._send(404, b'{"error": "Not found"}')
                body = outer.versions.get(self.path[len(prefix):].upper())
                if body is None:
                    return self._send(404, json.dumps({"error": "Model not found"}).encode())
                return self._send(200, json.dumps(body).encode())

            def _send(self, code, body, headers=None):
                self.send_response(code)
                for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    srv = CivitaiServer()
    monkeypatch.setenv("CIVITAI_ENDPOINT", srv.url)
    monkeypatch.delenv("CIVITAI_TOKEN", raising=False)
    yield srv
    srv.stop()


@pytest.fixture
def known(tmp_path, server):
    """A scanned folder with one file Civitai knows and one it does not."""
    lib = tmp_path / "loras"
    on_civitai = adapter(lib, "pony_sketch.safetensors", arch="sdxl-base", seed=1)
    adapter(lib, "private.safetensors", arch="sd1", seed=2)
    sha = hash_file(on_civitai).sha256
    server.versions[sha[:10].upper()] = version_body(sha)
    with Registry.open() as reg:
        reg.scan([lib])
    return on_civitai


def run(capsys, *args):
    code = cli.main(["civitai", "lookup", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_lookup_a_file_prints_and_records_with_source(known, server, capsys):
    code, out, err = run(capsys, str(known))
    sha = hash_file(known).sha256
    assert code == 0, err
    assert out.strip() == (f"{sha[:10].upper()}  {known}: Pony Sketch (model 4201, version 130072, Pony): "
                           "pnysketch, sketch style")
    assert server.requests == [(f"/api/v1/model-versions/by-hash/{sha[:10].upper()}", None)]
    with Registry.open() as reg:
        entry = reg.show(sha[:12])
        assert entry.sub_base == "Pony" and entry.all_trigger_words == ("pnysketch", "sketch style")
        assert ("https://image.civitai.com/xG1nkqKTMzGDvpLrqFT7WA/a/width=450/1.jpeg",) == tuple(
            entry.imported_values("preview_urls")[0][0])
        assert {s for _, s in entry.imported_values("civitai_version_id")} == {"civitai-api"}
        assert [e.file_name for e in reg.search(architecture="Pony")] == ["pony_sketch.safetensors"]
        # a re-scan keeps what Civitai said (it lives beside the sidecar facts, not in them)
        reg.scan([known.parent])
        assert reg.show(sha[:12]).sub_base == "Pony"


def test_lookup_registry_asks_once_per_entry_and_records_misses(known, server, capsys):
    code, out, err = run(capsys, "--registry")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("  pony_sketch.safetensors: Pony Sketch (model 4201, version 130072, Pony): "
                             "pnysketch, sketch style")
    assert lines[1].endswith("  private.safetensors: not on Civitai")
    assert "2 looked up, 1 found, 2 recorded" in err
    code, out, err = run(capsys, "--registry")
    assert out == "" and "0 looked up" in err and len(server.requests) == 2
    code, out, err = run(capsys, "--registry", "--refresh")
    assert len(server.requests) == 4


def test_token_is_sent_as_bearer_and_never_across_a_redirect(known, server, monkeypatch, capsys):
    monkeypatch.setenv("CIVITAI_TOKEN", "secret-token")
    assert run(capsys, str(known))[0] == 0
    assert server.requests[-1][1] == "Bearer secret-token"
    server.mode = "redirect"
    code, out, err = run(capsys, str(known))
    assert code == 2 and "answered with a redirect to http://127.0.0.2:9/steal" in err
    assert "secret-token" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("mode", "message"), [
    ("huge", "sent more than 4,194,304 bytes"),
    ("html", "did not answer with JSON"),
    ("500", "HTTP 500"),
    ("401", "the token was refused"),
    ("429", "rate limited"),
])
def test_bad_answers_are_one_line_exit_2_and_record_nothing(known, server, capsys, mode, message):
    server.mode = mode
    code, out, err = run(capsys, str(known))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with Registry.open() as reg:
        assert reg.show(hash_file(known).sha256[:12]).imported_values("civitai_version_id") == []


def test_an_answer_about_another_file_is_refused(known, server, capsys):
    sha = hash_file(known).sha256
    server.versions[sha[:10].upper()] = version_body("f" * 64)
    code, _, err = run(capsys, str(known))
    assert code == 2 and "lists other files" in err and "nothing was recorded" in err


def test_offline_says_so_in_one_line(known, monkeypatch, capsys):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    monkeypatch.setenv("CIVITAI_ENDPOINT", f"http://127.0.0.1:{port}")
    code, out, err = run(capsys, str(known))
    assert code == 2 and out == ""
    assert err.startswith("lorareg: error: Civitai is unreachable at http://127.0.0.1:") and "offline?" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "message"), [
    ((), "give FILES or --registry"),
    (("x.safetensors", "--registry"), "give FILES or --registry"),
    (("x.safetensors", "--refresh"), "--refresh goes with --registry"),
    (("--registry", "--endpoint", "ftp://x"), "is not an http(s) URL"),
])
def test_usage_errors(capsys, args, message):
    code, _, err = run(capsys, *args)
    assert code == 2 and message in err


def test_a_file_outside_the_registry_is_looked_up_but_not_recorded(tmp_path, server):
    path = adapter(tmp_path / "loose", "loose.safetensors", seed=9)
    sha = hash_file(path).sha256
    server.versions[sha[:10].upper()] = version_body(sha, base="SD 1.5", words=["loose"])
    with Registry.open() as reg:
        [result] = lookup_files([path], client=CivitaiClient.from_env(), registry=reg)
    assert result.found and result.recorded is None and result.value("architecture") == "sd1"


def test_client_refuses_a_non_hash():
    with pytest.raises(Exception, match="is not a file hash"):
        CivitaiClient(endpoint="http://127.0.0.1:9").by_hash("../../etc/passwd")
    assert issubclass(CivitaiUnreachable, CivitaiError)
