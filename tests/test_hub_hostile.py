"""A hostile Hub-compatible server (devserver's ``hostile`` knobs) against pull, push, search and remote verify.

Each attack here was reproduced against lorareg before the Hub code stopped trusting servers (issue 13):
a linked ETag that is a path made ``pull`` delete or create files outside its folders, a commit sha that
is a path made huggingface_hub write outside its cache, an endless body filled the disk, a huge model
info filled memory, an echoed ``Authorization`` header printed the token. Every test snapshots the whole
test folder (a decoy tree, the huggingface_hub cache, the registry) before and after, and allows changes
only where the pull may write.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")

import hashlib
import time
import tracemalloc
from pathlib import Path

import pytest

from loraregistry import cli
from loraregistry.hub import pull, push, search, verify_remote
from loraregistry.hub.errors import HubError, ResponseTooLarge, UnsafeFileName, UntrustedServerData
from loraregistry.hub.staging import PREFIX
from loraregistry.hub.transport import JSON_CAP
from loraregistry.registry import Registry

from .test_hub import hf_env, hub, make_adapter  # noqa: F401  (fixtures)

TOKEN = "hf_" + "Zq8" * 12  # shaped like a real token
VICTIM_TEXT = b"precious user data\n"


@pytest.fixture
def decoy(tmp_path):
    """Files an attacker would aim at, next to everything the pull may touch."""
    root = tmp_path / "decoy"
    (root / "sub").mkdir(parents=True)
    (root / "victim.txt").write_bytes(VICTIM_TEXT)
    (root / "sub" / "notes.md").write_bytes(b"# notes\n")
    return root


@pytest.fixture
def registry(tmp_path):
    with Registry.open(tmp_path / "reg") as reg:
        yield reg


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with what it is: file hash, link target, or folder."""
    seen: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            seen[name] = ("link", os.readlink(path))
        elif path.is_file():
            seen[name] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
        else:
            seen[name] = ("dir",)
    return seen


def changed_outside(before: dict, after: dict, allowed: tuple[str, ...]) -> list[str]:
    """Paths added, removed or changed anywhere but under ``allowed`` prefixes."""
    names = set(before) | set(after)
    return sorted(n for n in names if before.get(n) != after.get(n) and not n.startswith(allowed))


# The registry's own files may change (sqlite, WAL); its download folder must be empty again afterwards.
ALLOWED = ("reg/registry.db", "reg/store", "reg/downloads", "out")


def assert_nothing_kept(tmp_path: Path, before: dict, registry) -> None:
    assert changed_outside(before, snapshot(tmp_path), ALLOWED) == []
    downloads = tmp_path / "reg" / "downloads"
    assert not downloads.exists() or list(downloads.iterdir()) == []
    assert registry.list() == []
    assert not (tmp_path / "out").exists()


def cache_blobs(hf_cache: Path, repo: str) -> Path:
    """The folder huggingface_hub would store blobs in, which the ETag path escapes from."""
    return hf_cache / f"models--{repo.replace('/', '--')}" / "blobs"


def adapter_repo(hub, tmp_path, repo_id: str = "mallory/trap") -> bytes:
    data = make_adapter(tmp_path).read_bytes()
    hub.state.add_files(repo_id, {"cat.safetensors": data})
    return data


# --- ETags and commit shas that are paths --------------------------------------------------------------


@pytest.mark.parametrize("aim", ["existing victim", "new file"])
@pytest.mark.parametrize("corrupt", [True, False], ids=["wrong bytes", "right bytes"])
def test_linked_etag_that_is_a_path_touches_nothing(hub, registry, tmp_path, hf_env, decoy, aim, corrupt):
    adapter_repo(hub, tmp_path)
    target = decoy / ("victim.txt" if aim == "existing victim" else "planted.txt")
    hub.state.hostile.linked_etag = os.path.relpath(target, cache_blobs(hf_env, "mallory/trap"))
    if corrupt:  # before: the hash mismatch made lorareg unlink the link *and its resolved target*
        hub.state.corrupt.add("cat.safetensors")
    before = snapshot(tmp_path)
    with pytest.raises(UntrustedServerData, match="not the [0-9a-f]{64} the Hub lists"):
        pull("mallory/trap", endpoint=hub.endpoint, registry=registry, dest=tmp_path / "out")
    assert (decoy / "victim.txt").read_bytes() == VICTIM_TEXT and not (decoy / "planted.txt").exists()
    assert_nothing_kept(tmp_path, before, registry)


@pytest.mark.parametrize("sha", ["../../../../tmp/evil_ref", "decoy-relative", "A" * 40, "0" * 39, "", 7, ["0" * 40]])
def test_commit_sha_that_is_no_sha_is_refused(hub, registry, tmp_path, hf_env, decoy, sha):
    adapter_repo(hub, tmp_path)
    if sha == "decoy-relative":
        sha = os.path.relpath(decoy / "evil_ref", hf_env / "models--mallory--trap" / "refs")
    hub.state.hostile.commit_sha = sha
    hub.state.hostile.repo_commit = sha if isinstance(sha, str) and sha else None
    evil_ref_existed = Path("/tmp/evil_ref").exists()
    before = snapshot(tmp_path)
    with pytest.raises(UntrustedServerData, match="no commit sha"):
        pull("mallory/trap", endpoint=hub.endpoint, registry=registry)
    assert_nothing_kept(tmp_path, before, registry)
    assert not (decoy / "evil_ref").exists() and Path("/tmp/evil_ref").exists() == evil_ref_existed


def test_served_commit_must_be_the_pinned_one(hub, registry, tmp_path, decoy):
    adapter_repo(hub, tmp_path)
    hub.state.hostile.repo_commit = "0" * 40  # a well-formed sha, but not the one model_info pinned
    before = snapshot(tmp_path)
    with pytest.raises(UntrustedServerData, match="from commit '0{40}', not the pinned [0-9a-f]{40}"):
        pull("mallory/trap", endpoint=hub.endpoint, registry=registry)
    assert_nothing_kept(tmp_path, before, registry)


def test_a_sha_revision_must_come_back_as_itself(hub, registry, tmp_path, decoy):
    adapter_repo(hub, tmp_path)
    asked = hub.state.repos["mallory/trap"].branches["main"]
    hub.state.hostile.commit_sha = "f" * 40
    before = snapshot(tmp_path)
    with pytest.raises(UntrustedServerData, match=f"answered for commit {asked} with commit f{{40}}"):
        pull("mallory/trap", revision=asked, endpoint=hub.endpoint, registry=registry)
    assert_nothing_kept(tmp_path, before, registry)


# --- bounds -----------------------------------------------------------------------------------------------


def test_endless_body_stops_at_the_declared_size(hub, registry, tmp_path, decoy):
    data = adapter_repo(hub, tmp_path)
    hub.state.hostile.endless_body = True
    before = snapshot(tmp_path)
    started = time.monotonic()
    with pytest.raises(ResponseTooLarge, match=f"more than the {len(data):,} bytes it declared"):
        pull("mallory/trap", endpoint=hub.endpoint, registry=registry)
    assert time.monotonic() - started < 10
    # What the server got onto the wire before the client hung up: the declared size plus socket buffers.
    assert hub.state.hostile.body_bytes_sent < len(data) + (64 << 20)
    assert_nothing_kept(tmp_path, before, registry)


@pytest.mark.parametrize("declared", [True, False], ids=["Content-Length 2 GiB", "streamed without length"])
def test_huge_model_info_is_refused_fast_in_little_memory(hub, registry, tmp_path, decoy, declared):
    adapter_repo(hub, tmp_path)
    hub.state.hostile.model_info_bytes = 2 << 30
    hub.state.hostile.model_info_declared = declared
    before = snapshot(tmp_path)
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ResponseTooLarge, match=f"than the {JSON_CAP:,} bytes lorareg accepts"):
            pull("mallory/trap", endpoint=hub.endpoint, registry=registry)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 10 and peak < 3 * JSON_CAP
    assert hub.state.hostile.body_bytes_sent < JSON_CAP + (64 << 20)
    assert_nothing_kept(tmp_path, before, registry)


def test_a_trickling_answer_is_given_up_at_the_deadline(hub, registry, tmp_path, monkeypatch):
    import loraregistry.hub.transport as transport

    monkeypatch.setattr(transport, "READ_DEADLINE_S", 1.0)
    adapter_repo(hub, tmp_path)
    hub.state.hostile.trickle_model_info = True
    before = snapshot(tmp_path)
    started = time.monotonic()
    with pytest.raises(HubError, match="took more than 1 s to arrive"):
        pull("mallory/trap", endpoint=hub.endpoint, registry=registry)
    assert time.monotonic() - started < 5
    assert_nothing_kept(tmp_path, before, registry)


@pytest.mark.parametrize(("knob", "route"), [("commit_answer_bytes", ("POST", "/api/models/mallory/pushed/commit/")),
                                             ("model_info_bytes", ("GET", "/api/models/mallory/pushed"))])
def test_a_huge_answer_during_a_push_is_cut_off(hub, tmp_path, knob, route):
    """The commit answer always; the repo info where huggingface_hub asks for it during a push (0.x does)."""
    from loraregistry.hub.upload import ANSWER_CAP

    setattr(hub.state.hostile, knob, 2 << 30)
    hub.state.hostile.model_info_declared = False
    path = make_adapter(tmp_path)
    tracemalloc.start()
    started = time.monotonic()
    try:
        try:
            push(path, "mallory/pushed", endpoint=hub.endpoint)
            refused = False
        except ResponseTooLarge as exc:
            refused = True
            assert f"more than the {ANSWER_CAP:,} bytes lorareg accepts" in str(exc)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    asked = any(method == route[0] and p.startswith(route[1]) for method, p in hub.state.requests)
    assert refused == asked and (asked or knob == "model_info_bytes")
    assert elapsed < 20 and peak < 4 * ANSWER_CAP
    assert hub.state.hostile.body_bytes_sent < ANSWER_CAP + (64 << 20)


# --- tokens -----------------------------------------------------------------------------------------------


def _pull(hub, tmp_path):
    pull("mallory/trap", endpoint=hub.endpoint, token=TOKEN, registry=Registry.open(tmp_path / "reg2"))


def _push(hub, tmp_path):
    push(tmp_path / "push" / "pixel_cat.safetensors", "mallory/other", endpoint=hub.endpoint, token=TOKEN)


def _search(hub, tmp_path):
    search("cat", local=False, endpoint=hub.endpoint, token=TOKEN)


def _verify_remote(hub, tmp_path):
    verify_remote("hf://mallory/trap/cat.safetensors", endpoint=hub.endpoint, token=TOKEN)


@pytest.mark.parametrize("call", [_pull, _push, _search, _verify_remote], ids=lambda f: f.__name__[1:])
def test_echoed_authorization_never_shows_the_token(hub, tmp_path, call):
    (tmp_path / "push").mkdir()
    make_adapter(tmp_path / "push")
    adapter_repo(hub, tmp_path)
    hub.state.hostile.echo_authorization = True
    before = snapshot(tmp_path)
    with pytest.raises(HubError) as info:
        call(hub, tmp_path)
    text = f"{info.value} {info.value.one_line()} {info.value!r}"
    assert "HTTP 400" in text and "you sent Authorization" in text
    assert TOKEN not in text and TOKEN[3:] not in text
    assert changed_outside(before, snapshot(tmp_path), ("reg2",)) == []


@pytest.mark.parametrize("args", [["pull", "mallory/trap"], ["search", "cat", "--hub"]])
def test_cli_never_prints_an_echoed_token(hub, tmp_path, capsys, monkeypatch, args):
    monkeypatch.setenv("LORAREG_HOME", str(tmp_path / "home"))
    adapter_repo(hub, tmp_path)
    hub.state.hostile.echo_authorization = True
    before = snapshot(tmp_path)
    code = cli.main([*args, "--endpoint", hub.endpoint, "--token", TOKEN])
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    assert code == 2 and "Traceback" not in err and "you sent Authorization: Bearer ***" in err
    assert changed_outside(before, snapshot(tmp_path), ("home",)) == []


def test_cli_verify_hf_uri_with_an_env_token_is_redacted(hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    adapter_repo(hub, tmp_path)
    hub.state.hostile.echo_authorization = True
    code = cli.main(["verify", "hf://mallory/trap/cat.safetensors"])
    out, err = capsys.readouterr()
    assert code in (1, 2) and TOKEN not in out + err and "Traceback" not in err


def test_a_redirect_to_another_origin_gets_no_token(hub, registry, tmp_path):
    data = adapter_repo(hub, tmp_path)
    other = hub.endpoint.replace("127.0.0.1", "localhost")  # another origin, same server
    hub.state.hostile.redirect_downloads_to = other
    pulled = pull("mallory/trap", endpoint=hub.endpoint, token=TOKEN, registry=registry)
    assert Path(pulled.entry.path).read_bytes() == data
    downloads = [(host, sent) for host, path, sent in hub.state.authorized if "/resolve/" in path]
    assert downloads == [(hub.endpoint.split("//")[1], True), (other.split("//")[1], False)]


# --- what reaches the terminal ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a\x1b[2J.safetensors", "b\r.safetensors", "..\\..\\evil.safetensors"])
def test_listed_file_names_with_escapes_or_backslashes_are_refused(hub, registry, tmp_path, name):
    hub.state.add_files("mallory/names", {name: make_adapter(tmp_path).read_bytes()})
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeFileName, match="unsafe file name"):
        pull("mallory/names", endpoint=hub.endpoint, registry=registry, dest=tmp_path / "out")
    assert_nothing_kept(tmp_path, before, registry)


def test_a_commit_oid_that_is_no_sha_is_refused(hub, tmp_path):
    hub.state.hostile.commit_oid = "\x1b[2J../../x"
    with pytest.raises(UntrustedServerData, match="no commit sha") as info:
        push(make_adapter(tmp_path), "mallory/pushed", endpoint=hub.endpoint)
    assert "\x1b" not in str(info.value)


def test_search_shows_server_strings_as_text(hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LORAREG_HOME", str(tmp_path / "home"))
    card = '---\ntags:\n- lora\ninstance_prompt: "\\e[2Jwiped, [/bold]"\n---\n# x\n'
    hub.state.add_files("mallory/card", {"README.md": card.encode()})
    code = cli.main(["search", "--hub", "--endpoint", hub.endpoint])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err
    assert "\x1b" not in out and "[/bold]" in out and "\\x1b[2Jwiped" in out


# --- the download folder ------------------------------------------------------------------------------


def test_a_killed_pulls_folder_is_removed_by_the_next_pull(hub, registry, tmp_path):
    pytest.importorskip("fcntl")
    data = adapter_repo(hub, tmp_path)
    downloads = tmp_path / "reg" / "downloads"
    stale = downloads / f"{PREFIX}killed"
    (stale / "data").mkdir(parents=True)
    (stale / "lock").touch()  # nobody holds it: its pull died
    (stale / "data" / "cat.safetensors").write_bytes(data[:100])
    old = time.time() - 3600
    os.utime(stale, (old, old))
    pulled = pull("mallory/trap", endpoint=hub.endpoint, registry=registry)
    assert Path(pulled.entry.path).read_bytes() == data
    assert list(downloads.iterdir()) == []
