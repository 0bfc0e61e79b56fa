"""Undo kohya's ``"." -> "_"`` flattening of module paths.

Module names contain underscores too (``to_out.0``, ``proj_in``, ``self_attn``), so a flat name is
ambiguous. It is resolved, in order, by

1. the component's real module names: ``architectures.fingerprints.flat_name_index(component)``
   (flat name -> dotted path, union over the known base models), and
2. a splitter that cuts the name into known segments (``VOCABULARY`` words and numbers), preferring
   longer segments and backtracking when the rest does not parse.

A name neither resolves stays unresolved: its key is reported unknown, never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

# Every module-name segment the splitter may produce; numbers are always segments of their own.
VOCABULARY = frozenset({
    # diffusers UNet
    "down_blocks", "mid_block", "up_blocks", "attentions", "resnets", "downsamplers", "upsamplers",
    "transformer_blocks", "attn1", "attn2", "to_q", "to_k", "to_v", "to_out", "ff", "net", "proj",
    "proj_in", "proj_out", "norm", "norm1", "norm2", "norm3", "conv", "conv1", "conv2", "conv_shortcut",
    "time_emb_proj", "conv_in", "conv_out", "conv_norm_out", "time_embedding", "add_embedding",
    "linear_1", "linear_2",
    # SGM / LDM UNet
    "input_blocks", "middle_block", "output_blocks", "in_layers", "out_layers", "emb_layers",
    "skip_connection", "op", "time_embed", "label_emb", "out",
    # CLIP text model
    "text_model", "encoder", "layers", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "mlp",
    "fc1", "fc2", "layer_norm1", "layer_norm2", "embeddings", "token_embedding", "position_embedding",
    "final_layer_norm", "text_projection",
    # T5 encoder
    "shared", "block", "layer", "SelfAttention", "q", "k", "v", "o", "DenseReluDense", "wi", "wi_0",
    "wi_1", "wo", "layer_norm", "relative_attention_bias",
    # diffusers SD3 / Flux transformer (OneTrainer-style lora_transformer_ keys)
    "single_transformer_blocks", "attn", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    "ff_context", "norm1_context", "linear", "proj_mlp", "norm_out", "x_embedder", "context_embedder",
    "pos_embed", "time_text_embed", "timestep_embedder", "text_embedder", "guidance_embedder",
})


def flatten(path: str) -> str:
    return path.replace(".", "_")


@cache
def _word_parts(vocabulary: frozenset[str]) -> frozenset[str]:
    """Every "_"-separated part of every vocabulary word."""
    return frozenset(part for word in vocabulary for part in word.split("_"))


@cache
def _widest_word(vocabulary: frozenset[str]) -> int:
    """How many "_"-separated parts the longest vocabulary word has: no segment can be wider."""
    return max((word.count("_") + 1 for word in vocabulary), default=1)


def split_flat(flat: str, vocabulary: frozenset[str] = VOCABULARY) -> str | None:
    """The dotted path whose flattening is ``flat``, cut into vocabulary words, or None.

    Work is linear in the name: a segment is at most as wide as the widest vocabulary word, and each start is
    tried once (a hostile header may hold 100,000 long unknown names)."""
    parts = flat.split("_")
    known = _word_parts(vocabulary)
    if not all(part in known or part.isdigit() for part in parts):
        return None  # a part no word has and no number: no split exists (most unknown names end here)
    failed: set[int] = set()
    widest = _widest_word(vocabulary)

    def parse(start: int) -> list[str] | None:
        if start == len(parts):
            return []
        if start in failed:
            return None
        for end in range(min(len(parts), start + widest), start, -1):  # longest segment first
            segment = "_".join(parts[start:end])
            if segment in vocabulary or (end == start + 1 and segment.isdigit()):
                rest = parse(end)
                if rest is not None:
                    return [segment, *rest]
        failed.add(start)
        return None

    segments = parse(0) if flat else None
    return ".".join(segments) if segments else None


@cache
def name_index(component: str) -> Mapping[str, str]:
    """flat name -> dotted path of the component's real modules; empty when no index is available."""
    try:
        from ..architectures.fingerprints import flat_name_index
    except ImportError:  # the fingerprint data is optional for key mapping
        return {}
    try:
        return flat_name_index(component)
    except (KeyError, ValueError):  # a component the fingerprints do not cover
        return {}


def resolve(component: str, flat: str, roots: frozenset[str]) -> str | None:
    """The dotted module path of ``flat`` in ``component``, or None.

    Names the index does not know are split by vocabulary and accepted only when their first
    segment is one of ``roots`` (the component's top-level modules).
    """
    if (path := name_index(component).get(flat)) is not None:
        return path
    if not any(flat == root or flat.startswith(root + "_") for root in roots):
        return None  # the first segment can be no root: nothing to split (most unknown names end here)
    path = split_flat(flat)
    if path is None or path.split(".", 1)[0] not in roots:
        return None
    return path
