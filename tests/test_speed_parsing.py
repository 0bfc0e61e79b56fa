"""Key parsing does bounded work per key and gives the results the pattern-by-pattern parsers gave.

A header at the 100,000-entry cap may hold only names no format knows; each must cost a few dictionary lookups,
not a pass over every pattern or a quadratic search. The references below are the former implementations.
"""

from __future__ import annotations

import re

import pytest

from loraregistry.formats import flat_names, mmdit
from loraregistry.formats.flat_names import VOCABULARY, resolve, split_flat
from loraregistry.formats.paths import TEXT_ENCODER_ROOTS, TRANSFORMER_ROOTS
from loraregistry.formats.sgm import DIFFUSERS_ROOTS, SGM_ROOTS

# --- mmdit: one lookup per name instead of every rule's regex ---------------------------------------------


def _reference_rules(table: dict[str, str], *, flat: bool, reverse: bool) -> list[tuple[re.Pattern[str], str]]:
    pairs = [(canonical, native) for native, canonical in table.items()] if reverse else list(table.items())
    rules = []
    for source, target in pairs:
        text = source.replace(".", "_") if flat else source
        rules.append((re.compile(re.escape(text).replace(re.escape("{i}"), r"(?P<i>\d+)")), target))
    return rules


def _reference_apply(rules: list[tuple[re.Pattern[str], str]], name: str) -> str | None:
    for pattern, template in rules:
        if m := pattern.fullmatch(name):
            return template.replace("{i}", m["i"]) if "i" in pattern.groupindex else template
    return None


INDICES = ("0", "7", "12", "007", "\u0661\u0662", "x", "", "{i}", "1.2", "1_2", "-1")


def _names() -> list[str]:
    names = {"{i}", "img_in", "final_layer_linear", "final_layer.linear", "double_blocks_{i}_img_attn_qkv"}
    for table in mmdit.FAMILIES.values():
        for pair in table.items():
            for template in pair:
                for index in INDICES:
                    name = template.replace("{i}", index)
                    names |= {name, name.replace(".", "_"), name + "_x", "x." + name, name.upper()}
    return sorted(names)


@pytest.mark.parametrize("family", sorted(mmdit.FAMILIES))
@pytest.mark.parametrize(("flat", "reverse"), [(True, False), (False, False), (False, True)])
def test_mmdit_lookup_matches_the_rule_patterns(family, flat, reverse):
    reference = _reference_rules(mmdit.FAMILIES[family], flat=flat, reverse=reverse)
    rules = mmdit._rules(family, flat=flat, reverse=reverse)
    separator = "_" if flat else "."
    differing = [(name, _reference_apply(reference, name), mmdit._apply(rules, name, separator))
                 for name in _names()
                 if _reference_apply(reference, name) != mmdit._apply(rules, name, separator)]
    assert differing == []


# --- flat names: linear splitting, roots checked first ------------------------------------------------------


def _reference_split(flat: str, vocabulary: frozenset[str] = VOCABULARY) -> str | None:
    parts = flat.split("_")
    failed: set[int] = set()

    def parse(start: int) -> list[str] | None:
        if start == len(parts):
            return []
        if start in failed:
            return None
        for end in range(len(parts), start, -1):
            segment = "_".join(parts[start:end])
            if segment in vocabulary or (end == start + 1 and segment.isdigit()):
                rest = parse(end)
                if rest is not None:
                    return [segment, *rest]
        failed.add(start)
        return None

    segments = parse(0) if flat else None
    return ".".join(segments) if segments else None


FLAT_NAMES = [
    "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "down_blocks_1_resnets_0_time_emb_proj",
    "input_blocks_4_1_transformer_blocks_0_attn1_to_out_0", "text_model_encoder_layers_11_self_attn_q_proj",
    "encoder_layers_0_mlp_fc1", "encoder_block_0_layer_0_SelfAttention_q", "single_transformer_blocks_3_proj_mlp",
    "transformer_blocks_0_attn_add_q_proj", "conv_norm_out", "time_embedding_linear_1", "proj_in", "",
    "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q_extra_5_more_words_here", "foo_bar_1_baz",
    "down_blocks__0", "_down_blocks_0", "down_blocks_0_", "12_34", "to_out_0_0_0", "x" * 200,
    "_".join(["down_blocks"] * 300), "_".join(["0"] * 500) + "_zz", "_".join(["down_blocks"] * 50 + ["blocks"]),
    "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to", "down_blocks_0_zz_attn1",
]


@pytest.mark.parametrize("flat", FLAT_NAMES, ids=lambda n: n[:40] or "empty")
def test_split_flat_gives_what_the_unbounded_splitter_gave(flat):
    assert split_flat(flat) == _reference_split(flat)


ROOTS = [TEXT_ENCODER_ROOTS, TRANSFORMER_ROOTS, DIFFUSERS_ROOTS | SGM_ROOTS]


@pytest.mark.parametrize("flat", FLAT_NAMES, ids=lambda n: n[:40] or "empty")
@pytest.mark.parametrize("roots", ROOTS, ids=["text", "transformer", "unet"])
def test_resolve_with_the_roots_check_first_gives_the_same_path(flat, roots):
    path = _reference_split(flat)
    expected = path if path is not None and path.split(".", 1)[0] in roots else None
    assert resolve("no-such-component", flat, roots) == expected


class _CountingVocabulary(frozenset):
    lookups = 0

    def __contains__(self, item: object) -> bool:
        type(self).lookups += 1
        return super().__contains__(item)


@pytest.mark.parametrize("parts", [50, 500])
def test_split_flat_work_is_linear_in_the_name(parts):
    vocabulary = _CountingVocabulary(VOCABULARY)
    _CountingVocabulary.lookups = 0
    name = "_".join(["down_blocks"] * parts + ["blocks"])  # every part known, splits far, then fails at the end
    assert split_flat(name, vocabulary) is None
    widest = flat_names._widest_word(vocabulary)
    assert _CountingVocabulary.lookups <= widest * (2 * parts + 1)  # the unbounded splitter needed ~parts^2
