"""`lorareg serve` (issue 16 item 6) over HTTP with Starlette's test client: the grid and its filters, search,
paging, the detail page, the compatibility view, previews served only from indexed folders, read-only routes,
escaping, and no torch import."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from loraregistry.registry import Registry

from .test_registry_scan import adapter


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG, built by hand (no imaging library needed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


# name -> (architecture, seed, Civitai baseModel or None, A1111 activation text or None, tags, preview colour)
LIBRARY = {
    "pony_sketch": ("sdxl-base", 1, "Pony", None, ["style"], (220, 120, 40)),
    "illustrious_ink": ("sdxl-base", 2, "Illustrious", None, ["style"], (40, 120, 220)),
    "xl_plain": ("sdxl-base", 3, None, "xlplain", ["concept"], None),
    "pixel_cat": ("sd1", 4, None, "pxlcat, pixel art", ["character"], (60, 180, 90)),
}
TRIGGERS = {"pony_sketch": "pnysketch", "illustrious_ink": "ilink"}


def build_library(folder: Path) -> Path:
    """A ComfyUI-style folder: adapters with Civitai Helper and A1111 sidecars and previews; one peft file that
    ComfyUI loads but A1111 does not, so loader filters have something to separate."""
    for name, (arch, seed, civitai, activation, tags, colour) in LIBRARY.items():
        path = adapter(folder, f"{name}.safetensors", arch=arch, seed=seed, name=name.replace("_", " ").title(),
                       tags=tags)
        if civitai:
            Path(f"{folder / name}.civitai.info").write_text(json.dumps(
                {"id": seed * 100, "modelId": seed, "baseModel": civitai, "trainedWords": [TRIGGERS[name]]}))
        if activation:
            Path(f"{folder / name}.json").write_text(json.dumps({"activation text": activation,
                                                                  "preferred weight": 0.8}))
        if colour:
            Path(f"{folder / name}.preview.png").write_bytes(png(64, 64, colour))
        assert path.exists()
    return folder


@pytest.fixture
def client(tmp_path):
    from starlette.testclient import TestClient

    from loraregistry.serve import create_app

    lib = build_library(tmp_path / "ComfyUI" / "models" / "loras")
    with Registry.open(tmp_path / "reg") as reg:
        reg.scan([lib])
    with TestClient(create_app(tmp_path / "reg")) as test_client:
        test_client.lib = lib
        yield test_client


def names(html: str) -> list[str]:
    return sorted(re.findall(r'<h2 class="name"><a href="/entry/[0-9a-f]{64}">([^<]*)</a>', html))


@pytest.mark.parametrize(("query", "expected"), [
    ("", ["Illustrious Ink", "Pixel Cat", "Pony Sketch", "Xl Plain"]),
    ("base=Pony", ["Pony Sketch"]),
    ("base=sdxl-base", ["Illustrious Ink", "Pony Sketch", "Xl Plain"]),
    ("base=SD+1.5", ["Pixel Cat"]),
    ("q=pxlcat", ["Pixel Cat"]),
    ("q=ilink", ["Illustrious Ink"]),
    ("tag=style", ["Illustrious Ink", "Pony Sketch"]),
    ("tag=style&base=Illustrious", ["Illustrious Ink"]),
    ("loader=comfyui", ["Illustrious Ink", "Pixel Cat", "Pony Sketch", "Xl Plain"]),
    ("loader=peft", []),
])
def test_grid_filters_and_search(client, query, expected):
    response = client.get(f"/?{query}")
    assert response.status_code == 200
    assert names(response.text) == expected


def test_card_shows_base_trigger_words_rank_network_and_one_badge_per_loader(client):
    html = client.get("/?base=Pony").text
    card = html[html.index('<article class="card"'):html.index("</article>")]
    assert '<span class="arch">sdxl-base</span>' in card and '<span class="subbase">Pony</span>' in card
    assert 'data-copy="pnysketch"' in card and "lora · rank 2" in card
    badges = re.findall(r'<li class="badge (\w+)"[^>]*>(\w+):', card)
    from loraregistry.verify.consumers import known_targets

    assert sorted(name for _, name in badges) == sorted(known_targets()) and len(badges) >= 6
    assert dict((name, outcome) for outcome, name in badges)["peft"] == "fails"
    assert '<img src="/preview/' in card


def test_unknown_filter_values_say_so_and_show_nothing(client):
    html = client.get("/?loader=photoshop").text
    assert "unknown target &#39;photoshop&#39;" in html and names(html) == []
    html = client.get("/?base=no-such-base").text
    assert "unknown base architecture" in html and names(html) == []


def test_paging(tmp_path):
    from starlette.testclient import TestClient

    from loraregistry.serve import create_app

    lib = build_library(tmp_path / "loras")
    with Registry.open(tmp_path / "reg") as reg:
        reg.scan([lib])
    with TestClient(create_app(tmp_path / "reg", page_size=3)) as c:
        first = c.get("/")
        second = c.get("/?page=2")
        assert len(names(first.text)) == 3 and len(names(second.text)) == 1
        assert sorted(names(first.text) + names(second.text)) == names(c.get("/?page=1").text + second.text)
        assert 'rel="next" href="?page=2"' in first.text and 'rel="prev" href="?page=1"' in second.text
        assert "rel=\"next\"" not in second.text
        assert names(c.get("/?page=abc").text) == names(first.text)


def test_detail_page_shows_findings_hashes_paths_and_sourced_facts(client):
    html = client.get("/?base=Pony").text
    sha = re.search(r"/entry/([0-9a-f]{64})", html).group(1)
    detail = client.get(f"/entry/{sha}").text
    assert f"<code>{sha}</code>" in detail
    assert re.search(r'<td>peft</td><td class="code">LRG601</td><td>error</td>', detail)
    assert "<th>autov2</th><td><code>" + sha[:10] + "</code>" in detail
    assert str(client.lib / "pony_sketch.safetensors") in detail and "(present)" in detail
    assert "<td>sub_base</td><td>Pony</td><td>civitai-info</td>" in detail
    assert client.get("/entry/" + "0" * 64).status_code == 404
    assert client.get("/entry/not-hex").status_code == 404


def test_compatibility_view_groups_a_base_by_outcome_in_a_tool(client):
    html = client.get("/compat?base=sdxl&tool=comfyui").text
    sections = dict(re.findall(r'<section class="outcome" data-outcome="(\w+)">(.*?)</section>', html, re.S))
    assert list(sections) == ["loads"] and names(sections["loads"]) == ["Illustrious Ink", "Pony Sketch", "Xl Plain"]
    html = client.get("/compat?base=Pony&tool=peft").text
    sections = dict(re.findall(r'<section class="outcome" data-outcome="(\w+)">(.*?)</section>', html, re.S))
    assert list(sections) == ["fails"] and names(sections["fails"]) == ["Pony Sketch"]
    assert "unknown tool" in client.get("/compat?base=sdxl&tool=gimp").text


def test_previews_come_only_from_indexed_folders(client, tmp_path):
    html = client.get("/?base=Pony").text
    sha = re.search(r"/entry/([0-9a-f]{64})", html).group(1)
    response = client.get(f"/preview/{sha}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == (client.lib / "pony_sketch.preview.png").read_bytes()
    # a preview that is a link to a file outside every indexed folder is not served
    secret = tmp_path / "secret.png"
    secret.write_bytes(png(1, 1, (0, 0, 0)))
    preview = client.lib / "pony_sketch.preview.png"
    preview.unlink()
    preview.symlink_to(secret)
    assert client.get(f"/preview/{sha}").status_code == 404
    for path in ("/preview/..%2F..%2Fetc%2Fpasswd", "/preview/" + "0" * 64, "/static/../app.py"):
        assert client.get(path).status_code == 404, path


def test_routes_are_read_only(client):
    for method in ("post", "put", "delete", "patch"):
        assert getattr(client, method)("/").status_code == 405


def test_text_from_sidecars_is_escaped(tmp_path):
    from starlette.testclient import TestClient

    from loraregistry.serve import create_app

    lib = tmp_path / "loras"
    adapter(lib, "evil.safetensors", name="Evil")
    (lib / "evil.json").write_text(json.dumps({"activation text": '<script>alert(1)</script>", x="'}))
    with Registry.open(tmp_path / "reg") as reg:
        reg.scan([lib])
    with TestClient(create_app(tmp_path / "reg")) as c:
        html = c.get("/").text
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_serving_and_scanning_do_not_import_torch(tmp_path):
    lib = build_library(tmp_path / "loras")
    code = (
        "import sys\n"
        "from loraregistry.registry import Registry\n"
        "from starlette.testclient import TestClient\n"
        "from loraregistry.serve import create_app\n"
        f"reg = Registry.open({str(tmp_path / 'reg')!r}); r = reg.scan([{str(lib)!r}]); reg.close()\n"
        "assert r.hashed == 4, r.to_dict()\n"
        f"c = TestClient(create_app({str(tmp_path / 'reg')!r}))\n"
        "assert c.get('/').status_code == 200 and c.get('/compat?base=sdxl&tool=comfyui').status_code == 200\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'peft', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_serve_command_is_registered_and_refuses_nothing_on_help():
    from loraregistry import cli

    assert cli.main(["serve", "--help"]) == 0


def test_serve_on_a_busy_port_is_one_line_exit_2(capsys):
    import socket

    from loraregistry import cli

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        code = cli.main(["serve", "--port", str(busy.getsockname()[1])])
    finally:
        busy.close()
    err = capsys.readouterr().err
    assert code == 2 and "cannot listen on 127.0.0.1:" in err and "pick another --port" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_compatibility_view_shows_a_page_and_links_the_rest(tmp_path):
    from starlette.testclient import TestClient

    from loraregistry.serve import create_app

    lib = build_library(tmp_path / "loras")
    with Registry.open(tmp_path / "reg") as reg:
        reg.scan([lib])
    with TestClient(create_app(tmp_path / "reg", page_size=2)) as c:
        html = c.get("/compat?base=sdxl-base&tool=comfyui").text
    assert "<h2>3 loads in comfyui</h2>" in html and len(names(html)) == 2
    assert '1 more not shown: <a href="/?base=sdxl-base&amp;loader=comfyui">page through them</a>' in html
