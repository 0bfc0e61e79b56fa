"""The ``push``/``pull``/``search`` and ``registry`` commands through ``lorareg``'s main(), and hub.env."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")

import json
import subprocess
import sys

import pytest

from loraregistry import cli

from .test_hub import hf_env, hub, make_adapter  # noqa: F401  (fixtures)

ENTRIES = {
    "push": "loraregistry.cli.hub_cmd:push",
    "pull": "loraregistry.cli.hub_cmd:pull",
    "search": "loraregistry.cli.hub_cmd:search",
    "registry": "loraregistry.cli.registry_cmd:registry",
}


@pytest.fixture(autouse=True)
def commands(monkeypatch):
    """The COMMANDS entries these modules need (until they are added to loraregistry/cli/__init__.py)."""
    for name, target in ENTRIES.items():
        monkeypatch.setitem(cli.cli.lazy_commands, name, target)


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args", [["push"], ["pull"], ["search"], ["registry"], *[["registry", c] for c in
                                  ("add", "list", "show", "rm", "export", "rebuild")]])
def test_help(capsys, args):
    code, out, _ = run(capsys, *args, "--help")
    assert code == 0 and "Usage:" in out


def test_registry_commands(capsys, tmp_path):
    path = make_adapter(tmp_path, tags=["cat"])
    code, out, _ = run(capsys, "registry", "add", str(path), "--json")
    assert code == 0
    (entry,) = json.loads(out)
    assert entry["verify"]["ok"] and entry["trigger_words"] == ["pxlcat"]
    code, out, _ = run(capsys, "registry", "list", "--trigger", "pxlcat")
    assert code == 0 and entry["id"] in out and "Pixel Cat" in out
    code, out, _ = run(capsys, "registry", "list", "--json", "--rating", "adult")
    assert json.loads(out) == []
    code, out, _ = run(capsys, "registry", "show", entry["id"][:8])
    assert code == 0 and entry["sha256"] in out and "origin" in out
    code, out, _ = run(capsys, "registry", "export")
    assert [json.loads(line)["sha256"] for line in out.splitlines()] == [entry["sha256"]]
    code, out, _ = run(capsys, "registry", "rm", entry["id"])
    assert code == 0 and "removed" in out
    code, _, err = run(capsys, "registry", "show", entry["id"])
    assert code == 2 and "no registry entry" in err


def test_corrupt_registry_says_rebuild_and_rebuild_fixes_it(capsys, tmp_path):
    run(capsys, "registry", "add", str(make_adapter(tmp_path)))
    home = os.environ["LORAREG_HOME"]
    with open(os.path.join(home, "registry.db"), "wb") as f:
        f.write(b"not sqlite" * 100)
    for side in ("registry.db-wal", "registry.db-shm"):
        if os.path.exists(os.path.join(home, side)):
            os.unlink(os.path.join(home, side))
    code, _, err = run(capsys, "registry", "list")
    assert code == 2 and "corrupt" in err and "lorareg registry rebuild" in err and "Traceback" not in err
    code, out, _ = run(capsys, "registry", "rebuild")
    assert code == 0 and "indexed 1" in out
    code, out, _ = run(capsys, "registry", "list")
    assert code == 0 and "Pixel Cat" in out


def test_push_pull_search_commands(capsys, hub, tmp_path):  # noqa: F811
    path = make_adapter(tmp_path)
    code, out, _ = run(capsys, "push", str(path), "--repo", "alice/cat", "--endpoint", hub.endpoint, "--json")
    assert code == 0 and json.loads(out)["files"][0] == "pixel_cat.safetensors"
    code, out, _ = run(capsys, "pull", "alice/cat", "--endpoint", hub.endpoint)
    assert code == 0 and "verify ok" in out
    code, out, _ = run(capsys, "search", "--trigger", "pxlcat", "--endpoint", hub.endpoint, "--json")
    assert {(h["source"], h["id"]) for h in json.loads(out)} >= {("hub", "alice/cat")}
    assert any(h["source"] == "local" for h in json.loads(out))
    code, out, _ = run(capsys, "search", "--local", "--json")
    assert {h["source"] for h in json.loads(out)} == {"local"}


def test_auth_and_missing_repo_errors_are_one_line(capsys, hub, tmp_path):  # noqa: F811
    hub.state.token = "right"
    code, out, err = run(capsys, "push", str(make_adapter(tmp_path)), "--repo", "alice/cat", "--endpoint",
                         hub.endpoint, "--token", "wrong-token")
    assert code == 2 and "hf auth login" in err and "wrong-token" not in out + err
    code, _, err = run(capsys, "pull", "alice/missing", "--endpoint", hub.endpoint)
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1


def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_XET", "HF_ENDPOINT")}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_env_disables_xet_for_other_endpoints_before_import():
    probe = ("from loraregistry.hub import env; env.prepare({!r}); "
             "import huggingface_hub.constants as c; print(c.HF_HUB_DISABLE_XET)")
    assert _python(probe.format("http://127.0.0.1:9")) == "True"
    assert _python(probe.format("https://huggingface.co")) == "False"
    assert _python(probe.format("http://127.0.0.1:9"), HF_HUB_DISABLE_XET="0") == "False"  # the user's choice wins
    assert _python(probe.format(None), HF_ENDPOINT="http://mirror.local") == "True"


def test_cli_modules_do_not_import_huggingface_hub_or_torch():
    out = _python("import sys, loraregistry.cli.hub_cmd, loraregistry.cli.registry_cmd, loraregistry.hub, "
                  "loraregistry.registry; print('huggingface_hub' in sys.modules, 'torch' in sys.modules)")
    assert out == "False False"
