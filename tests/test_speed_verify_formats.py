"""Detection reads the kohya parses kept for every caller (``KeyFormat.claim``) instead of copying one per key: a
whole mapping must leave those kept results as they were, and ``parse`` must still hand out copies."""

from __future__ import annotations

import copy

from loraregistry import formats
from loraregistry.formats import FORMATS
from tests.adapters import lora_tensors


def test_mapping_leaves_the_kept_parses_unchanged_and_parse_copies():
    keys = [*lora_tensors("sdxl-base"), *lora_tensors("sd1")]  # two te prefixes: the dialect takes one
    kohya = FORMATS["kohya"]
    kept = {key: kohya.claim(key) for key in keys}
    before = copy.deepcopy({key: (p.key, dict(p.facts)) for key, p in kept.items()})
    formats._detected_mapping.cache_clear()
    mapping = formats.to_canonical(keys)
    mapping.dialect["te_prefix"] = "changed"
    assert {key: (p.key, dict(p.facts)) for key, p in kept.items()} == before
    assert all(kohya.claim(key) is kept[key] for key in keys)  # the kept objects themselves were read
    mine = kohya.parse(keys[0])
    assert mine == kept[keys[0]] and mine.facts is not kept[keys[0]].facts
    mine.facts["unet_names"] = "changed"
    assert kohya.claim(keys[0]).facts == before[keys[0]][1]


def test_claim_is_parse_for_every_shipped_format():
    keys = [*lora_tensors("sd1"), "lora_unet_nothing.lora_down.weight", "transformer.x.lora_A.weight", "junk"]
    for fmt in FORMATS.values():
        for key in keys:
            assert fmt.claim(key) == fmt.parse(key), (fmt.name, key)


def _grouped(mapping) -> dict:
    grouped: dict = {}
    for key, ck in mapping.mapped.items():
        grouped.setdefault(ck.module, {})[ck.role] = key
    return grouped


def test_by_module_is_the_mapping_grouped_and_each_callers_own():
    for keys in (list(lora_tensors("sd1")), list(lora_tensors("sdxl-base")), [*lora_tensors("sd1"), "junk"]):
        mapping, by_module = formats.to_canonical_by_module(keys)
        assert mapping == formats.to_canonical(keys)
        assert list(by_module.items()) == list(_grouped(mapping).items())
        first = next(iter(by_module))
        by_module[first]["down"] = "changed"
        by_module.clear()
        mapping.mapped.clear()
        again, regrouped = formats.to_canonical_by_module(keys)
        assert regrouped == _grouped(again) and again == formats.to_canonical(keys) and regrouped[first]["down"] != "changed"


def test_by_module_follows_a_mapping_made_anew(monkeypatch):
    """Registering a format forgets the kept mappings; the grouping kept for the old one must not be served."""
    keys = [*lora_tensors("sd1"), "SHOUT.down"]
    _, before = formats.to_canonical_by_module(keys)
    monkeypatch.setattr(formats, "FORMATS", dict(formats.FORMATS))
    from tests.test_speed_verify import _Shouty

    formats.register_format(_Shouty())
    try:
        mapping, after = formats.to_canonical_by_module(keys)
        assert mapping.format == "mixed" and after == _grouped(mapping) and after != before
    finally:
        formats._detected_mapping.cache_clear()
