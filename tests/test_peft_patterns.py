"""peft pattern keys from untrusted files: the same answers as peft's ``re.match``, in linear time."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraregistry.peft_patterns import MAX_PATTERNS, first_matching, peft_pattern_matches


def peft_matches(key: str, name: str) -> bool:
    """What peft itself does (``peft.utils.other.get_pattern_key``); only for trusted test patterns."""
    return re.match(rf"(.*\.)?({key})$", name) is not None


# Catastrophic backtracking for re; each runs against names it almost matches.
ATTACKS = [
    "(.|.)*Z",
    "(.|.)*(Y|Z)",
    "(a+)+$",
    "(a+)+(b|c)",
    "(a|aa)*b",
    "(a|aa)*(b|c)",
    "((a*)*)*(c|d)",
    "(a*)*[bc]",
    "(\\w+\\.?)+(x|y)",
    "(.*a){12}(b|c)",
    "(a{1,20}){1,20}(b|c)",
]
# None of them matches these names: each ends in a character no attack pattern accepts last.
ATTACK_NAMES = ["a" * 199 + "!", ("a." * 100)[:199] + "!", "a" * 999 + "!"]


@pytest.mark.parametrize("key", ATTACKS)
def test_attack_patterns_finish_in_milliseconds(key):
    for name in ATTACK_NAMES:
        start = time.process_time()
        assert peft_pattern_matches(key, name) is False
        assert time.process_time() - start < 1.0  # re needs hours for several of these


def test_attack_pattern_that_matches_answers_true():
    assert peft_pattern_matches("(a+)+$", "a" * 1000) is True
    assert peft_pattern_matches("(.|.)*Z", "a" * 1000 + "Z") is True


def test_attack_pattern_from_the_issue_against_a_real_module_table():
    names = [f"down_blocks.{i}.attentions.{j}.transformer_blocks.0.attn1.to_{p}"
             for i in range(3) for j in range(2) for p in "qkv"] * 10
    start = time.process_time()
    assert first_matching({"(.|.)*Z": 8.0}, names) is None
    assert time.process_time() - start < 1.0


# Ordinary peft patterns (from peft's docs and real configs) with names that do and do not match.
ORDINARY = [
    ("to_k", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k", True),
    ("to_k", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k_proj", False),
    ("attn1.to_k", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k", True),
    ("attn1.to_k", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", False),
    ("^model.decoder.layers.0.encoder_attn.k_proj", "model.decoder.layers.0.encoder_attn.k_proj", True),
    ("^model.decoder.layers.0.encoder_attn.k_proj", "base.model.decoder.layers.0.encoder_attn.k_proj", False),
    ("down_blocks.1.attentions.0.proj_in", "down_blocks.1.attentions.0.proj_in", True),
    ("down_blocks.1.attentions.0.proj_in", "up_blocks.1.attentions.0.proj_in", False),
    ("down_blocks.1.attentions.0.proj_in", "x.down_blocks.1.attentions.0.proj_in", True),
    (r"transformer_blocks\.\d+\.attn\.to_[qkv]", "transformer_blocks.12.attn.to_v", True),
    (r"transformer_blocks\.\d+\.attn\.to_[qkv]", "transformer_blocks.12.attn.to_out.0", False),
    (r"single_transformer_blocks\.(1[0-9]|2[0-7])\.proj_out", "single_transformer_blocks.17.proj_out", True),
    (r"single_transformer_blocks\.(1[0-9]|2[0-7])\.proj_out", "single_transformer_blocks.28.proj_out", False),
    (r".*\.mlp\.fc[12]", "text_model.encoder.layers.3.mlp.fc2", True),
    (r"(q|k|v)_proj", "text_model.encoder.layers.3.self_attn.q_proj", True),
    (r"(?:q|k|v)_proj", "text_model.encoder.layers.3.self_attn.out_proj", False),
    (r"layers\.[0-9]{1,2}\.self_attn\.q_proj", "text_model.encoder.layers.11.self_attn.q_proj", True),
    (r"layers\.[0-9]{2,}\.self_attn\.q_proj", "text_model.encoder.layers.1.self_attn.q_proj", False),
    (r"[^.]+\.conv\d?", "down_blocks.0.resnets.1.conv2", True),
    (r"\w+_proj$", "self_attn.v_proj", True),
    ("lora_A*", "x.lora_AAA", True),
    ("a{,2}", "aa", True),
    ("a{}", "x.a{}", True),
]


@pytest.mark.parametrize(("key", "name", "expected"), ORDINARY)
def test_ordinary_patterns_match_like_peft(key, name, expected):
    assert peft_matches(key, name) is expected  # the table itself is right
    assert peft_pattern_matches(key, name) is expected


# Keys outside the subset: matched as literal module names, never an exception, whatever re would do.
OUTSIDE = [
    ("a(?=b)", "x.a(?=b)", True),
    ("a(?=b)", "ab", False),
    (r"(a)\1", "x.(a)\\1", True),
    ("a*+b", "ab", False),
    ("(?i)TO_K", "to_k", False),
    ("{1}", "{1}", True),
    ("a" * 1001, "x." + "a" * 1001, True),
    ("(((((((((((((((((((((((((((((((((((((((((((((((((((a)))))))))))))))))))))))))))))))))))))))))))))))))))",
     "a", False),
    ("a{99999999999}", "a", False),  # re raises OverflowError here
    ("[z-a]", "[z-a]", True),
    ("(unclosed", "x.(unclosed", True),
]


@pytest.mark.parametrize(("key", "name", "expected"), OUTSIDE)
def test_unsupported_keys_are_literal_names(key, name, expected):
    assert peft_pattern_matches(key, name) is expected


def test_huge_repeat_counts_stay_bounded():
    start = time.process_time()
    assert peft_pattern_matches("(a{1,1000}){1,1000}", "a" * 10) is False  # too many states: a literal name
    assert peft_pattern_matches("a{3}", "aaa") is True
    assert time.process_time() - start < 0.5


def test_first_matching_follows_table_order_and_caps_the_table():
    assert first_matching({"to_q": 1, "to_.": 2}, ["attn.to_k"]) == 2
    assert first_matching({"to_.": 1, "to_q": 2}, ["attn.to_q"]) == 1
    assert first_matching({3: 1, "to_q": 2}, ["attn.to_q"]) == 2  # non-string keys are skipped
    table = {f"nomatch{i}": 0 for i in range(MAX_PATTERNS)} | {"to_q": 5}
    assert first_matching(table, ["attn.to_q"]) is None  # past the cap: not looked at


# --- property: same answer as re on patterns from the supported subset ------------------------------------

_ALPHABET = "ab._0\n"
_atoms = st.sampled_from(["a", "b", "_", "0", ".", r"\.", r"\d", r"\w", r"\s", r"\D", "[ab]", "[^a]", "[a-c.]",
                          "[_0-9]", "[^.\n]", r"[\d.]", "^", "$"])


def _quantify(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(inner, st.sampled_from(["", "", "*", "+", "?", "*?", "{2}", "{1,2}", "{,2}", "{2,}"])).map(
        lambda t: t[0] + t[1] if not (t[0] in ("^", "$") and t[1]) else t[0])


_patterns = st.recursive(
    _quantify(_atoms),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=4).map("".join),
        st.lists(inner, min_size=2, max_size=3).map("|".join),
        _quantify(inner.map(lambda p: f"({p})")),
        _quantify(inner.map(lambda p: f"(?:{p})")),
    ),
    max_leaves=8,
)


@settings(max_examples=800, deadline=None)
@given(_patterns, st.text(alphabet=_ALPHABET, max_size=12))
def test_same_answer_as_re_on_supported_patterns(key, name):
    try:
        expected = peft_matches(key, name)
    except re.error:
        return  # not a pattern peft could use either
    assert peft_pattern_matches(key, name) is expected, (key, name)
