"""``hf://`` URIs split as huggingface_hub splits them; names a server sends checked for shape; messages redacted."""

from __future__ import annotations

import pytest

from loraregistry.hub.errors import HubError, InvalidRepoId, UnsafeFileName, redact, remember_secret, server_text
from loraregistry.hub.uri import is_commit_sha, is_git_blob_id, is_sha256, parse_hf_uri, parse_spec

# (uri, repo_type, repo_id, revision, filename)
URIS = [
    ("hf://user/repo/f.safetensors", "model", "user/repo", None, "f.safetensors"),
    ("hf://models/user/repo/f.safetensors", "model", "user/repo", None, "f.safetensors"),
    ("hf://user/repo@v2/f.safetensors", "model", "user/repo", "v2", "f.safetensors"),
    ("hf://user/repo@refs/pr/3/f.safetensors", "model", "user/repo", "refs/pr/3", "f.safetensors"),
    ("hf://user/repo@refs/pr/3/sub/f.safetensors", "model", "user/repo", "refs/pr/3", "sub/f.safetensors"),
    ("hf://user/repo@refs%2Fpr%2F3/f.safetensors", "model", "user/repo", "refs/pr/3", "f.safetensors"),
    ("hf://user/repo@refs/convert/parquet/f.safetensors", "model", "user/repo", "refs/convert/parquet",
     "f.safetensors"),
    ("hf://user/repo@feature%2Fx/f.safetensors", "model", "user/repo", "feature/x", "f.safetensors"),
    ("hf://datasets/user/repo/f.safetensors", "dataset", "user/repo", None, "f.safetensors"),
    ("hf://datasets/user/repo@refs/pr/7/dir/f.safetensors", "dataset", "user/repo", "refs/pr/7", "dir/f.safetensors"),
    ("hf://spaces/user/repo/f.safetensors", "space", "user/repo", None, "f.safetensors"),
    ("hf://user/repo/dir/f@1.safetensors", "model", "user/repo", None, "dir/f@1.safetensors"),  # '@' in a name
    ("hf://user/repo/f.safetensors@v2", "model", "user/repo", "v2", "f.safetensors"),  # lorareg's older spelling
    ("hf://user/repo/f.safetensors@0123456789abcdef0123456789abcdef01234567", "model", "user/repo",
     "0123456789abcdef0123456789abcdef01234567", "f.safetensors"),
]


@pytest.mark.parametrize(("uri", "repo_type", "repo_id", "revision", "filename"), URIS)
def test_hf_uri_parts(uri, repo_type, repo_id, revision, filename):
    spec = parse_hf_uri(uri)
    assert (spec.repo_type, spec.repo_id, spec.revision, spec.filename) == (repo_type, repo_id, revision, filename)


@pytest.mark.parametrize(("uri", "repo_type", "repo_id", "revision", "filename"),
                         [u for u in URIS if not u[0].split("/")[-1].endswith("safetensors@v2")
                          and "@0123" not in u[0]])
def test_hf_uri_parts_agree_with_huggingface_hub(uri, repo_type, repo_id, revision, filename):
    """Where huggingface_hub has its own parser (1.x+), it splits every URI the same way."""
    hf_uris = pytest.importorskip("huggingface_hub.utils._hf_uris")
    theirs = hf_uris.parse_hf_uri(uri)
    assert (theirs.type, theirs.id, theirs.revision, theirs.path_in_repo) == (repo_type, repo_id, revision, filename)


@pytest.mark.parametrize(("uri", "error"), [
    ("hf://user", InvalidRepoId),
    ("hf://user/repo", InvalidRepoId),  # no file
    ("hf://datasets/user", InvalidRepoId),
    ("hf://buckets/user/b/f.safetensors", InvalidRepoId),
    ("hf://dataset/user/repo/f.safetensors", InvalidRepoId),  # singular type prefix
    ("hf://user/repo@/f.safetensors", InvalidRepoId),  # empty revision
    ("hf://user/repo/../../etc/f.safetensors", UnsafeFileName),
    ("hf://user/repo@refs/pr/3/../x.safetensors", UnsafeFileName),
    ("hf://user/repo/a\\b.safetensors", UnsafeFileName),
    ("https://x/y", InvalidRepoId),
])
def test_bad_hf_uris(uri, error):
    with pytest.raises(error):
        parse_hf_uri(uri)


@pytest.mark.parametrize(("spec", "repo_id", "revision", "filename"), [
    ("alice/cat", "alice/cat", None, None),
    ("alice/cat@v1", "alice/cat", "v1", None),
    ("alice/cat@refs/pr/2", "alice/cat", "refs/pr/2", None),
    ("alice/cat/sub/c.safetensors", "alice/cat", None, "sub/c.safetensors"),
    ("alice/cat/c.safetensors@v1", "alice/cat", "v1", "c.safetensors"),
])
def test_pull_specs(spec, repo_id, revision, filename):
    parsed = parse_spec(spec)
    assert (parsed.repo_id, parsed.revision, parsed.filename) == (repo_id, revision, filename)


@pytest.mark.parametrize(("check", "value", "ok"), [
    (is_commit_sha, "0123456789abcdef0123456789abcdef01234567", True),
    (is_commit_sha, "0123456789ABCDEF0123456789abcdef01234567", False),
    (is_commit_sha, "../../../../tmp/evil_ref", False),
    (is_commit_sha, "0" * 41, False),
    (is_commit_sha, "0" * 39 + "\n", False),
    (is_commit_sha, None, False),
    (is_sha256, "a" * 64, True),
    (is_sha256, "a" * 63 + "/", False),
    (is_sha256, '"' + "a" * 62 + '"', False),
    (is_sha256, 64, False),
    (is_git_blob_id, "b" * 40, True),
    (is_git_blob_id, "b" * 64, False),
])
def test_server_identifier_shapes(check, value, ok):
    assert check(value) is ok


@pytest.mark.parametrize(("text", "shown"), [
    ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
    ("token hf_AbCdEfGhIjKlMnOpQrStUv was refused", "token hf_*** was refused"),
    ("the exact remembered-secret-42 here", "the exact *** here"),
    ("plain text stays", "plain text stays"),
])
def test_redact(text, shown):
    remember_secret("remembered-secret-42")
    assert redact(text) == shown


def test_server_text_is_one_safe_line():
    shown = server_text("a\x1b[31mred\x1b[0m\nsecond line\u202e" + "x" * 400)
    assert "\x1b" not in shown and "\n" not in shown and "\u202e" not in shown
    assert "\\x1b[31m" in shown and len(shown) == 300 and shown.endswith("...")


def test_every_hub_error_is_redacted():
    remember_secret("s3cr3t-t0ken")
    error = HubError("server said s3cr3t-t0ken", path="http://h/?t=s3cr3t-t0ken", hint="Bearer s3cr3t-t0ken")
    assert "s3cr3t-t0ken" not in error.one_line() and "s3cr3t-t0ken" not in str(error)


@pytest.mark.parametrize(("uri", "url"), [
    ("hf://user/repo/f.safetensors", "E/user/repo/resolve/main/f.safetensors"),
    ("hf://user/repo@refs/pr/3/f.safetensors", "E/user/repo/resolve/refs%2Fpr%2F3/f.safetensors"),
    ("hf://datasets/user/repo@v1/d/f.safetensors", "E/datasets/user/repo/resolve/v1/d/f.safetensors"),
    ("hf://spaces/user/repo/f g.safetensors", "E/spaces/user/repo/resolve/main/f%20g.safetensors"),
])
def test_resolve_urls(uri, url):
    """huggingface_hub's hf_hub_url layout: type prefix, revision url-encoded as one segment."""
    from huggingface_hub import hf_hub_url

    from loraregistry.hub.remote import resolve_url

    spec = parse_hf_uri(uri)
    assert resolve_url(uri, endpoint="E") == url
    assert hf_hub_url(spec.repo_id, spec.filename, repo_type=spec.repo_type, revision=spec.revision or "main",
                      endpoint="E") == url
