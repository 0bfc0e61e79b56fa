"""push / pull / search / remote header read: the real huggingface_hub client against loraregistry/hub/devserver.py."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # before huggingface_hub is imported; the fixture covers the rest

import socket
from pathlib import Path

import pytest

from loraregistry.hub import pull, push, read_remote_header, search
from loraregistry.hub.card import BEGIN, END
from loraregistry.hub.errors import (
    AmbiguousFile,
    DownloadFailed,
    HashMismatch,
    HubAuthError,
    HubUnreachable,
    InvalidRepoId,
    PushRefused,
    RemoteFileNotFound,
    RepoNotFound,
    RevisionNotFound,
    UnsafeFileName,
)
from loraregistry.registry import Registry
from loraregistry.safetensors_io import read_header
from loraregistry.schema import AdapterMetadata, to_header_value

from .adapters import KNOWN_BAD_ADAPTERS, lora_tensors, write_adapter
from loraregistry.hub.devserver import HubServer


@pytest.fixture
def hf_env(monkeypatch, tmp_path):
    """huggingface_hub read its settings at import (maybe before conftest set HF_HOME): point them here."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-stored-tokens"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")  # so hub.env.prepare() leaves os.environ as it found it
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return tmp_path / "hf-cache"


@pytest.fixture
def hub(hf_env):
    with HubServer() as server:
        yield server


@pytest.fixture
def registry(tmp_path):
    with Registry.open(tmp_path / "reg") as reg:
        yield reg


def make_adapter(folder: Path, name: str = "Pixel Cat", *, seed: int = 0, **record) -> Path:
    record.setdefault("trigger_words", ["pxlcat"])
    meta = AdapterMetadata(name=name, base={"architecture": "sd1"}, license="openrail++", **record)
    return write_adapter(folder / f"{name.lower().replace(' ', '_')}.safetensors",
                         lora_tensors("sd1", seed=seed), {"lorareg": to_header_value(meta)})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- push ------------------------------------------------------------------------------------------


def test_push_then_pull_round_trip(hub, registry, tmp_path):
    path = make_adapter(tmp_path, tags=["cat"])
    pushed = push(path, "alice/cat", endpoint=hub.endpoint, token="t")
    assert hub.state.commits == [pushed.commit]  # one commit with everything
    assert set(pushed.files) == {"pixel_cat.safetensors", "lorareg.json", "README.md"}

    pulled = pull("alice/cat", endpoint=hub.endpoint, registry=registry, dest=tmp_path / "out")
    assert pulled.commit == pushed.commit and pulled.filename == "pixel_cat.safetensors"
    assert Path(pulled.entry.path).read_bytes() == path.read_bytes()
    assert Path(pulled.path).read_bytes() == path.read_bytes() and Path(pulled.path).parent == tmp_path / "out"
    assert read_header(pulled.entry.path).metadata == read_header(path).metadata
    (origin,) = pulled.entry.origins
    assert (origin.kind, origin.endpoint, origin.repo, origin.revision, origin.file) == (
        "hub", hub.endpoint, "alice/cat", pushed.commit, "pixel_cat.safetensors")
    assert pulled.entry.verdict.ok and pulled.report.ok and pulled.report.path == pulled.path
    assert registry.search(trigger="pxlcat")[0].sha256 == pulled.entry.sha256


def test_pushed_metadata_and_card(hub, tmp_path):
    import json

    push(make_adapter(tmp_path, content_rating="adult"), "alice/cat", endpoint=hub.endpoint)
    record = json.loads(hub.state.read("alice/cat", "lorareg.json"))
    assert record["name"] == "Pixel Cat" and record["trigger_words"] == ["pxlcat"]
    assert len(record["tensor_sha256"]) == 64  # completed from the file
    card = hub.state.read("alice/cat", "README.md").decode()
    for line in ("base_model: stable-diffusion-v1-5/stable-diffusion-v1-5", "base_model_relation: adapter",
                 "library_name: diffusers", "license: openrail++", "instance_prompt: pxlcat", "- template:sd-lora",
                 "- stable-diffusion", "- lora", "- not-for-all-audiences"):
        assert line in card
    assert 'load_lora_weights("alice/cat", weight_name="pixel_cat.safetensors")' in card
    assert "<lora:pixel_cat:1> pxlcat" in card


def test_general_rating_has_no_adult_tag(hub, tmp_path):
    push(make_adapter(tmp_path), "alice/cat", endpoint=hub.endpoint)
    assert "not-for-all-audiences" not in hub.state.read("alice/cat", "README.md").decode()


def test_push_with_samples_adds_widget(hub, tmp_path):
    image = tmp_path / "sample1.png"
    image.write_bytes(b"\x89PNG fake")
    image.with_suffix(".txt").write_text("pxlcat sitting on a roof")
    pushed = push(make_adapter(tmp_path), "alice/cat", endpoint=hub.endpoint, samples=[image])
    assert "samples/sample1.png" in pushed.files
    card = hub.state.read("alice/cat", "README.md").decode()
    assert "text: pxlcat sitting on a roof" in card and "url: samples/sample1.png" in card


def test_repush_keeps_user_text_outside_the_markers(hub, tmp_path):
    push(make_adapter(tmp_path), "alice/cat", endpoint=hub.endpoint)
    card = hub.state.read("alice/cat", "README.md").decode()
    head, body = card.split("---\n", 2)[1:]
    edited = (f"---\n{head}datasets:\n- my/cats\n---\nMy intro, written by hand.\n" + body
              + "\n## My notes\n\nThanks to everyone.\n").replace("- lora\n", "- lora\n- my-own-tag\n")
    hub.state.add_files("alice/cat", {"README.md": edited.encode()})
    push(make_adapter(tmp_path, name="Pixel Cat v2", seed=1), "alice/cat", endpoint=hub.endpoint)
    card = hub.state.read("alice/cat", "README.md").decode()
    assert card.count(BEGIN) == 1 and card.count(END) == 1
    assert card.index("My intro, written by hand.") < card.index(BEGIN)
    assert card.index(END) < card.index("## My notes") and "Thanks to everyone." in card
    assert "# Pixel Cat v2" in card and "# Pixel Cat\n" not in card
    assert "- my/cats" in card and "- my-own-tag" in card  # the user's YAML survives too


def test_push_of_a_failing_adapter_uploads_nothing(hub, tmp_path):
    bad = next(b for b in KNOWN_BAD_ADAPTERS if b.name == "unknown_keys_random").build(tmp_path)
    with pytest.raises(PushRefused, match="LRG102") as info:
        push(bad, "alice/bad", endpoint=hub.endpoint)
    assert "nothing was uploaded" in str(info.value)
    assert hub.state.requests == [] and hub.state.commits == [] and "alice/bad" not in hub.state.repos


def test_push_with_a_wrong_token_says_log_in(hub, tmp_path):
    hub.state.token = "the-right-one"
    with pytest.raises(HubAuthError, match="hf auth login") as info:
        push(make_adapter(tmp_path), "alice/cat", endpoint=hub.endpoint, token="a-wrong-one")
    assert "a-wrong-one" not in str(info.value) and "401" in str(info.value)
    assert hub.state.commits == []


def test_push_without_write_permission_says_log_in(hub, tmp_path):
    hub.state.forbid_writes = True
    with pytest.raises(HubAuthError, match="HTTP 403.*hf auth login"):
        push(make_adapter(tmp_path), "alice/cat", endpoint=hub.endpoint, token="t")


@pytest.mark.parametrize("repo_id", ["no-namespace", "a/b/c", "alice/bad--name", "alice/..", "alice/x.git", ""])
def test_bad_repo_ids_are_refused_before_any_request(hub, tmp_path, repo_id):
    with pytest.raises(InvalidRepoId):
        push(make_adapter(tmp_path), repo_id, endpoint=hub.endpoint)
    assert hub.state.requests == []


# --- pull ------------------------------------------------------------------------------------------------


def test_pull_missing_repo_revision_and_file(hub, registry, tmp_path):
    push(make_adapter(tmp_path), "alice/cat", endpoint=hub.endpoint)
    with pytest.raises(RepoNotFound, match="'alice/nope' does not exist"):
        pull("alice/nope", endpoint=hub.endpoint, registry=registry)
    with pytest.raises(RevisionNotFound, match="'v9'"):
        pull("alice/cat", revision="v9", endpoint=hub.endpoint, registry=registry)
    with pytest.raises(RemoteFileNotFound, match="other.safetensors"):
        pull("alice/cat/other.safetensors", endpoint=hub.endpoint, registry=registry)
    assert registry.list() == []


def test_pull_pins_a_named_revision_to_its_commit(hub, registry, tmp_path):
    first = push(make_adapter(tmp_path), "alice/cat", endpoint=hub.endpoint)
    push(make_adapter(tmp_path, seed=5), "alice/cat", endpoint=hub.endpoint)
    pulled = pull(f"alice/cat/pixel_cat.safetensors@{first.commit}", endpoint=hub.endpoint, registry=registry)
    assert pulled.commit == first.commit
    assert pulled.entry.origins[0].revision == first.commit


def test_server_down_gives_a_clear_message(hf_env, registry, tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(HubUnreachable, match=f"cannot reach {endpoint}"):
        pull("alice/cat", endpoint=endpoint, registry=registry)
    with pytest.raises(HubUnreachable, match="--endpoint"):
        push(make_adapter(tmp_path), "alice/cat", endpoint=endpoint)


def test_interrupted_download_leaves_nothing_behind(hub, registry, tmp_path, monkeypatch, hf_env):
    import huggingface_hub.file_download as file_download

    monkeypatch.setattr(file_download.time, "sleep", lambda s: None)  # its resume retries wait 1 s each
    push(make_adapter(tmp_path), "alice/cat", endpoint=hub.endpoint)
    hub.state.truncate.add("pixel_cat.safetensors")
    with pytest.raises(DownloadFailed, match="nothing was kept"):
        pull("alice/cat", endpoint=hub.endpoint, registry=registry)
    assert registry.list() == []
    leftovers = [p for p in (Path(registry.root) / "downloads").rglob("*") if p.is_file()]
    assert leftovers == []
    assert not [p for p in hf_env.rglob("*") if p.is_file()]  # pull never writes huggingface_hub's cache


def test_hash_mismatch_is_refused_and_cleaned_up(hub, registry, tmp_path, hf_env):
    push(make_adapter(tmp_path), "alice/cat", endpoint=hub.endpoint)
    hub.state.corrupt.add("pixel_cat.safetensors")
    with pytest.raises(HashMismatch, match="the download was deleted"):
        pull("alice/cat", endpoint=hub.endpoint, registry=registry)
    assert registry.list() == []
    assert [p for p in (Path(registry.root) / "downloads").rglob("*") if p.is_file()] == []
    assert not [p for p in hf_env.rglob("*") if p.is_file()]  # pull never writes huggingface_hub's cache


def test_file_names_that_escape_are_refused(hub, registry, tmp_path):
    for spec in ("alice/cat/../../etc/evil.safetensors", "alice/cat//abs.safetensors", "alice/cat/a\\b.safetensors"):
        with pytest.raises(UnsafeFileName):
            pull(spec, endpoint=hub.endpoint, registry=registry)
    assert hub.state.requests == []
    # A hostile name listed by the server itself.
    hub.state.add_files("mallory/trap", {"..\\..\\evil.safetensors": make_adapter(tmp_path).read_bytes()})
    with pytest.raises(UnsafeFileName):
        pull("mallory/trap", endpoint=hub.endpoint, registry=registry, dest=tmp_path / "out")
    assert registry.list() == [] and not (tmp_path / "out").exists()


def test_pull_without_file_needs_a_single_top_level_adapter(hub, registry, tmp_path):
    data = make_adapter(tmp_path).read_bytes()
    hub.state.add_files("alice/two", {"a.safetensors": data, "b.safetensors": data, "sub/c.safetensors": data})
    with pytest.raises(AmbiguousFile, match="a.safetensors, b.safetensors"):
        pull("alice/two", endpoint=hub.endpoint, registry=registry)
    pulled = pull("alice/two/sub/c.safetensors", endpoint=hub.endpoint, registry=registry)
    assert pulled.entry.origins[0].file == "sub/c.safetensors"


def test_pull_of_a_plain_git_file_checks_the_git_blob_id(hub, registry, tmp_path):
    data = make_adapter(tmp_path).read_bytes()
    hub.state.add_files("alice/plain", {"README.md": b"# hi\n"})
    from loraregistry.hub.devserver import StoredFile

    commit = hub.state.repos["alice/plain"].resolve("main")
    commit.files["plain.safetensors"] = StoredFile(size=len(data), data=data)  # not LFS
    pulled = pull("alice/plain", endpoint=hub.endpoint, registry=registry)
    assert Path(pulled.entry.path).read_bytes() == data


# --- remote header and search ------------------------------------------------------------------------


def test_remote_header_reads_only_the_header(hub, tmp_path):
    path = make_adapter(tmp_path)
    push(path, "alice/cat", endpoint=hub.endpoint)
    hub.state.bytes_served.clear()
    remote = read_remote_header("hf://alice/cat/pixel_cat.safetensors", endpoint=hub.endpoint)
    local = read_header(path)
    assert remote.header.tensors == local.tensors and remote.header.metadata == local.metadata
    assert remote.file_size == path.stat().st_size
    served = [n for _, _, n in hub.state.bytes_served]
    assert served == [8, local.header_size] and remote.bytes_read == 8 + local.header_size
    assert sum(served) < path.stat().st_size


def test_remote_header_over_https_url_and_at_revision(hub, tmp_path):
    pushed = push(make_adapter(tmp_path), "alice/cat", endpoint=hub.endpoint)
    url = f"{hub.endpoint}/alice/cat/resolve/{pushed.commit}/pixel_cat.safetensors"
    assert read_remote_header(url, endpoint=hub.endpoint).header.tensors
    at_rev = read_remote_header(f"hf://alice/cat/pixel_cat.safetensors@{pushed.commit}", endpoint=hub.endpoint)
    assert at_rev.header.tensors
    with pytest.raises(RemoteFileNotFound):
        read_remote_header("hf://alice/cat/missing.safetensors", endpoint=hub.endpoint)


def test_token_goes_only_to_the_endpoint(hub, tmp_path, monkeypatch):
    seen: list[dict] = []
    import huggingface_hub.utils as hf_utils

    real = hf_utils.get_session

    class Spy:
        def stream(self, method, url, headers=None, **kw):
            seen.append(dict(headers or {}))
            return real().stream(method, url, headers=headers, **kw)

    monkeypatch.setattr(hf_utils, "get_session", lambda: Spy())
    push(make_adapter(tmp_path), "alice/cat", endpoint=hub.endpoint)
    other = hub.endpoint.replace("127.0.0.1", "localhost")  # another origin, same server
    read_remote_header(f"{other}/alice/cat/resolve/main/pixel_cat.safetensors", endpoint=hub.endpoint,
                       token="secret")
    read_remote_header("hf://alice/cat/pixel_cat.safetensors", endpoint=hub.endpoint, token="secret")
    assert all("authorization" not in {k.lower() for k in h} for h in seen[:2])
    assert all(h.get("authorization") == "Bearer secret" for h in seen[2:])


def test_search_hub_and_local(hub, registry, tmp_path):
    push(make_adapter(tmp_path), "alice/cat", endpoint=hub.endpoint)
    push(make_adapter(tmp_path, name="Oil Dog", seed=3, trigger_words=["oildog"]), "bob/dog", endpoint=hub.endpoint)
    hub.state.add_files("carol/not-a-lora", {"README.md": b"---\ntags:\n- text-generation\n---\n"})
    registry.add(make_adapter(tmp_path, name="Local Cat", seed=4, trigger_words=["lcat"]))

    hits = search(None, endpoint=hub.endpoint, registry=registry)
    assert {(h.source, h.id) for h in hits if h.source == "hub"} == {("hub", "alice/cat"), ("hub", "bob/dog")}
    assert [h.name for h in hits if h.source == "local"] == ["Local Cat"]
    cat = next(h for h in hits if h.id == "alice/cat")
    assert cat.has_lorareg_metadata and cat.trigger_words == ["pxlcat"] and cat.architecture == "sd1"

    assert [h.id for h in search(trigger="oildog", local=False, endpoint=hub.endpoint)] == ["bob/dog"]
    assert [h.id for h in search("cat", hub=True, local=False, base="sd1", endpoint=hub.endpoint)] == ["alice/cat"]
    assert search("cat", local=False, base="sdxl", endpoint=hub.endpoint) == []
    assert [h.name for h in search(trigger="lcat", hub=False, registry=registry)] == ["Local Cat"]


def test_verify_remote_reads_only_the_header(hub, tmp_path):
    from loraregistry.hub import verify_remote

    path = make_adapter(tmp_path)
    push(path, "alice/cat", endpoint=hub.endpoint)
    hub.state.bytes_served.clear()
    report = verify_remote("hf://alice/cat/pixel_cat.safetensors", endpoint=hub.endpoint)
    assert report.ok and report.detected_architecture == "sd1" and not report.tensors_checked
    assert sum(n for _, _, n in hub.state.bytes_served) == 8 + read_header(path).header_size
