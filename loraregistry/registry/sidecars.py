"""Sidecars and previews next to an adapter, read into facts that name their source.

Formats (as the tools write them):

* A1111 / Forge ``name.json`` (the extra-networks "edit metadata" dialog): ``description``, ``sd version``
  (SD1 / SD2 / SDXL / Unknown), ``activation text``, ``preferred weight`` (0 = not set), ``negative text``,
  ``notes``.
* Civitai Helper ``name.civitai.info``: the Civitai model-version API answer for the file (``id`` = version id,
  ``modelId``, ``name``, ``baseModel``, ``trainedWords``, ``images[].url``, ``model.name``).
* Previews, looked up in A1111's order: ``name.{png,jpg,jpeg,webp,gif}`` then ``name.preview.{...}``.

A sidecar is user-editable input: each is size-capped, parsed with the standard JSON parser, and a value of the
wrong type or size is reported as a problem and skipped, never coerced. Facts never replace what the adapter
file declares; the registry keeps them beside the declared record (``imported``) and flags disagreements.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .civitai_bases import a1111_base, civitai_base

A1111_SUFFIX = ".json"
CIVITAI_SUFFIX = ".civitai.info"
PREVIEW_EXTS = ("png", "jpg", "jpeg", "webp", "gif")
SOURCE_A1111 = "a1111-sidecar"
SOURCE_CIVITAI = "civitai-info"
SOURCE_CIVITAI_API = "civitai-api"
MAX_SIDECAR_BYTES = 4 << 20  # a .civitai.info with long descriptions and image metadata stays well below
MAX_TEXT = 10_000
MAX_WORDS = 200
MAX_WORD = 500


@dataclass
class Sidecars:
    """What the files next to one adapter say. ``signature``: (name, size, mtime_ns) of each sidecar read,
    so a re-scan re-reads them only when one changed; ``problems``: one line per unusable sidecar value."""

    facts: list[dict[str, Any]] = field(default_factory=list)
    preview: str | None = None
    problems: list[str] = field(default_factory=list)
    signature: list[list[Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"facts": self.facts, "preview": self.preview, "problems": self.problems,
                "signature": self.signature}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sidecars:
        return cls(facts=list(data.get("facts", [])), preview=data.get("preview"),
                   problems=list(data.get("problems", [])), signature=list(data.get("signature", [])))


def sidecar_names(adapter_name: str) -> tuple[str, ...]:
    """Every sidecar and preview name that belongs to ``adapter_name`` (``x.safetensors``)."""
    stem = adapter_name.rsplit(".", 1)[0]
    previews = [f"{stem}.{ext}" for ext in PREVIEW_EXTS] + [f"{stem}.preview.{ext}" for ext in PREVIEW_EXTS]
    return (stem + A1111_SUFFIX, stem + CIVITAI_SUFFIX, *previews)


def signature(folder: Path, adapter_name: str, names: set[str]) -> list[list[Any]]:
    """(name, size, mtime_ns) of each sidecar or preview present; stats only those the folder listing holds."""
    found = []
    for name in sidecar_names(adapter_name):
        if name in names:
            try:
                st = os.stat(folder / name)
            except OSError:
                continue
            found.append([name, st.st_size, st.st_mtime_ns])
    return found


def read_sidecars(adapter: Path, names: set[str], sig: list[list[Any]]) -> Sidecars:
    """Read the sidecars of ``adapter`` whose names ``names`` (the folder's listing) holds."""
    out = Sidecars(signature=sig)
    stem = adapter.name.rsplit(".", 1)[0]
    folder = adapter.parent
    present = {row[0] for row in sig}
    if stem + A1111_SUFFIX in present:
        data = _load_json(folder / (stem + A1111_SUFFIX), out)
        if data is not None:
            _a1111_facts(data, stem + A1111_SUFFIX, out)
    if stem + CIVITAI_SUFFIX in present:
        data = _load_json(folder / (stem + CIVITAI_SUFFIX), out)
        if data is not None:
            civitai_version_facts(data, stem + CIVITAI_SUFFIX, out)
    for name in sidecar_names(adapter.name)[2:]:
        if name in present:
            out.preview = str(folder / name)
            break
    return out


def _load_json(path: Path, out: Sidecars) -> dict[str, Any] | None:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SIDECAR_BYTES + 1)
    except OSError as exc:
        out.problems.append(f"{path.name}: cannot read ({exc.strerror or exc})")
        return None
    if len(raw) > MAX_SIDECAR_BYTES:
        out.problems.append(f"{path.name}: larger than {MAX_SIDECAR_BYTES:,} bytes, not read")
        return None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        out.problems.append(f"{path.name}: not valid JSON ({str(exc)[:120]}); fix or delete it")
        return None
    if not isinstance(data, dict):
        out.problems.append(f"{path.name}: expected a JSON object, got {type(data).__name__}")
        return None
    return data


def _add(out: Sidecars, source: str, file: str, name: str, value: Any) -> None:
    out.facts.append({"field": name, "value": value, "source": source, "file": file})


def _text(out: Sidecars, file: str, key: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        out.problems.append(f"{file}: {key!r} should be text, got {type(value).__name__}; skipped")
        return None
    if len(value) > MAX_TEXT:
        out.problems.append(f"{file}: {key!r} is longer than {MAX_TEXT} characters; skipped")
        return None
    return value.strip() or None


def _words(out: Sidecars, file: str, key: str, value: Any) -> list[str]:
    """Trigger words from a comma-separated activation text or a list of phrases (Civitai ``trainedWords``)."""
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, list):
        items = [part for item in value if isinstance(item, str) for part in item.split(",")]
        if len(items) < len(value) and any(not isinstance(item, str) for item in value):
            out.problems.append(f"{file}: {key!r} holds values that are not text; those were skipped")
    elif value is None:
        return []
    else:
        out.problems.append(f"{file}: {key!r} should be text or a list of text, got {type(value).__name__}")
        return []
    words = list(dict.fromkeys(w.strip() for w in items if w.strip()))
    if len(words) > MAX_WORDS or any(len(w) > MAX_WORD for w in words):
        out.problems.append(f"{file}: {key!r} has more than {MAX_WORDS} words or one over {MAX_WORD} characters")
        return []
    return words


def _number(out: Sidecars, file: str, key: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        out.problems.append(f"{file}: {key!r} should be a number, got {type(value).__name__}; skipped")
        return None
    try:
        number = float(value)
    except ValueError:
        out.problems.append(f"{file}: {key!r} should be a number, got {str(value)[:40]!r}; skipped")
        return None
    if number != number or abs(number) > 100:
        out.problems.append(f"{file}: {key!r} = {number} is no usable weight; skipped")
        return None
    return number


def _base_facts(out: Sidecars, source: str, file: str, label: str, row) -> None:
    _add(out, source, file, "base_model", label)
    if row is not None:
        _add(out, source, file, "architecture", row.architecture)
        _add(out, source, file, "family", row.family)
        if source in (SOURCE_CIVITAI, SOURCE_CIVITAI_API):
            _add(out, source, file, "sub_base", row.label)


def _a1111_facts(data: dict[str, Any], file: str, out: Sidecars) -> None:
    words = _words(out, file, "activation text", data.get("activation text"))
    if words:
        _add(out, SOURCE_A1111, file, "trigger_words", words)
    weight = _number(out, file, "preferred weight", data.get("preferred weight"))
    if weight:  # A1111 writes 0 for "not set"
        _add(out, SOURCE_A1111, file, "recommended_weight", weight)
    for key, name in (("description", "description"), ("notes", "notes"), ("negative text", "negative_text")):
        text = _text(out, file, key, data.get(key))
        if text:
            _add(out, SOURCE_A1111, file, name, text)
    version = _text(out, file, "sd version", data.get("sd version"))
    if version and version.lower() != "unknown":
        row = a1111_base(version)
        if row is None:
            out.problems.append(f"{file}: unknown 'sd version' {version[:40]!r} (A1111 writes SD1, SD2, SDXL)")
        else:
            _base_facts(out, SOURCE_A1111, file, version, row)


def civitai_version_facts(data: dict[str, Any], file: str, out: Sidecars, source: str = SOURCE_CIVITAI) -> None:
    """Facts from a Civitai model-version object (a ``.civitai.info`` file, or the API's answer: ``source``)."""
    words = _words(out, file, "trainedWords", data.get("trainedWords"))
    if words:
        _add(out, source, file, "trigger_words", words)
    for key, name in (("id", "civitai_version_id"), ("modelId", "civitai_model_id")):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 53:
            _add(out, source, file, name, value)
        elif value is not None:
            out.problems.append(f"{file}: {key!r} should be a positive integer; skipped")
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    title = _text(out, file, "model.name", model.get("name"))
    if title:
        _add(out, source, file, "name", title)
    base = _text(out, file, "baseModel", data.get("baseModel"))
    if base:
        row = civitai_base(base)
        if row is None:
            out.problems.append(f"{file}: baseModel {base[:40]!r} is not in lorareg's table; kept as text")
        _base_facts(out, source, file, base, row)
    images = data.get("images")
    urls = [img["url"] for img in images if isinstance(img, dict) and isinstance(img.get("url"), str)
            and img["url"].startswith("https://") and len(img["url"]) <= 2000][:20] if isinstance(images, list) else []
    if urls:
        _add(out, source, file, "preview_urls", urls)


def merge_facts(facts: list[dict[str, Any]], declared: dict[str, Any]) -> dict[str, Any]:
    """The imported record: each field's facts with their sources, and where a fact disagrees with what the
    file declares (``declared``: field -> value from the file), a conflict naming both. The declared value
    stays the entry's value; an imported one only fills a field the file leaves empty."""
    fields: dict[str, list[dict[str, Any]]] = {}
    for fact in facts:
        fields.setdefault(fact["field"], []).append(fact)
    conflicts = []
    for name, found in sorted(fields.items()):
        own = declared.get(name)
        if own in (None, "", [], ()):
            continue
        for fact in found:
            if not _agrees(name, own, fact["value"]):
                conflicts.append({"field": name, "declared": own, "imported": fact["value"],
                                  "source": fact["source"], "file": fact["file"]})
    return {"facts": facts, "conflicts": conflicts}


def _agrees(name: str, declared: Any, imported: Any) -> bool:
    if name == "trigger_words":
        return {w.lower() for w in declared} == {w.lower() for w in imported}
    if name == "architecture" and imported is None:
        return True  # the sidecar names a family only (SD2) or a base lorareg does not model
    if isinstance(declared, str) and isinstance(imported, str):
        return declared.strip().lower() == imported.strip().lower()
    return declared == imported
