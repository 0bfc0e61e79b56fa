"""Rank and alpha facts from shapes alone, for well-formed and broken modules (found by both fuzzers: a scalar
LoHa/LoKr factor next to a peft config crashed every command with IndexError)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loraregistry.alphas import scale_rank
from loraregistry.verify import verify
from tests.adapters import write_adapter


@pytest.mark.parametrize(("shapes", "rank"), [
    ({"down": (4, 320), "up": (320, 4)}, 4),
    ({"up": (320, 4)}, 4),
    ({"down": (), "up": ()}, None),
    ({"hada_w1_a": (320, 8), "hada_w1_b": (8, 320)}, 8),
    ({"hada_w1_a": (320, 8), "hada_w1_b": ()}, None),
    ({"lokr_w1": (16, 16), "lokr_w2_a": (20, 2), "lokr_w2_b": (2, 20)}, 2),
    ({"lokr_w1": (16, 16), "lokr_w2_b": ()}, None),
    ({"diff": (320, 320)}, None),
])
def test_scale_rank(shapes, rank):
    assert scale_rank(shapes) == rank


@pytest.mark.parametrize("role", ["hada_w1_b", "lokr_w2_b"])
def test_scalar_factor_with_a_peft_config_is_a_finding_not_a_crash(tmp_path: Path, role):
    base = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {f"{base}.{role}": np.asarray(1.0, dtype=np.float16),
               f"{base}.{'hada_w1_a' if role.startswith('hada') else 'lokr_w1'}": np.ones((4, 4), np.float16)}
    path = write_adapter(tmp_path / "scalar.safetensors", tensors, {"lora_adapter_metadata": '{"lora_alpha": 8}'})
    report = verify(path)
    assert not report.ok and report.codes()
