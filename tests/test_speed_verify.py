"""What header-level verify keeps between files of one folder: key mappings and fingerprint fits for the key
lists and module shapes it has seen. Kept results must be the results, and must not leak between callers."""

from __future__ import annotations

from loraregistry import formats
from loraregistry.adapter import AdapterFile
from loraregistry.architectures import fingerprint, fingerprint_names
from loraregistry.formats.base import KeyFormat, ParsedKey
from loraregistry.canonical import CanonicalKey
from loraregistry.verify import verify
from loraregistry.verify.detect import _fits, architectures_of, measure_fit
from loraregistry.verify.shapes import factor_problems
from tests.adapters import lora_tensors, write_adapter


def test_each_caller_gets_its_own_mapping():
    keys = list(lora_tensors("sd1"))
    first = formats.to_canonical(keys)
    first.mapped.clear()
    first.unknown.append("x")
    first.dialect["te_prefix"] = "changed"
    second = formats.to_canonical(keys)
    assert len(second.mapped) == len(keys) and second.unknown == [] and second.dialect["te_prefix"] == "lora_te"


class _Shouty(KeyFormat):
    """A format for keys no shipped format reads: registering it must change what those keys map to."""

    name = "shouty-test"
    roles = frozenset({"down"})

    def parse(self, key, *, component=None):
        return ParsedKey(CanonicalKey("unet", "SHOUT", "down"), {}) if key == "SHOUT.down" else None

    def emit_one(self, ckey, dialect):  # pragma: no cover - never written
        raise NotImplementedError


def test_registering_a_format_forgets_the_mappings_kept(monkeypatch):
    keys = [*lora_tensors("sd1"), "SHOUT.down"]
    assert "SHOUT.down" in formats.to_canonical(keys).unknown
    monkeypatch.setattr(formats, "FORMATS", dict(formats.FORMATS))
    formats.register_format(_Shouty())
    try:
        assert formats.to_canonical(keys).format == "mixed"
    finally:
        formats._detected_mapping.cache_clear()


def test_kept_fits_are_the_fits_measured(tmp_path):
    for arch in ("sd1", "sdxl-base"):
        path = write_adapter(tmp_path / f"{arch}.safetensors", lora_tensors(arch))
        adapter = AdapterFile.open(path)
        deltas = {key: factor_problems(info)[0] for key, info in adapter.modules.items()}
        signature = tuple((key, info.algo, deltas[key]) for key, info in adapter.modules.items()
                          if deltas[key] is not None)
        measured = sorted((measure_fit(adapter.modules, deltas, fingerprint(name), architectures_of(name))
                           for name in fingerprint_names()), key=lambda f: (-f.fitted, f.fingerprint))
        assert list(_fits(signature)) == measured


def test_a_second_file_with_the_same_keys_gets_its_own_verdict(tmp_path):
    """Same key list, different shapes: the mapping is shared, the fit is not."""
    sd1 = lora_tensors("sd1")
    good = write_adapter(tmp_path / "good.safetensors", sd1)
    bad_tensors = dict(sd1)
    key = next(k for k in bad_tensors if k.endswith("lora_up.weight"))
    bad_tensors[key] = bad_tensors[key][:-1]  # one output row short: fits no base
    bad = write_adapter(tmp_path / "bad.safetensors", bad_tensors)
    first = verify(good, tensors=False)
    assert (first.detected_architecture, first.fitted) == ("sd1", first.modules)
    report = verify(bad, tensors=False)
    assert (report.detected_architecture, report.fitted) == (None, report.modules - 1)
    assert "LRG301" in report.codes()  # the short module's shape, against the closest base
