"""SD3 / FLUX.1 single-file checkpoints under their original names: where each canonical module's weight lives.

Layouts read (by header only):

* the transformer under BFL's names, bare (``double_blocks.0.img_attn.qkv.weight``, as BFL ships FLUX.1) or under
  ``model.diffusion_model.`` (ComfyUI's full checkpoints; SD3/SD3.5's ``joint_blocks.0.x_block.attn.qkv``);
  module names map through the ``formats.mmdit`` tables, the same ones the LoRA formats use;
* text encoders as ComfyUI stores them: ``text_encoders.clip_l.transformer.`` (CLIP-L),
  ``text_encoders.clip_g.transformer.`` (SD3's CLIP-G), ``text_encoders.t5xxl.transformer.`` (T5: FLUX.1's
  ``text_encoder_2``, SD3's ``text_encoder_3``).

A fused weight is addressed twice: whole, under its fused canonical path (``transformer_blocks.0.attn.{to_q,to_k,
to_v}``: what kohya and BFL LoRAs patch), and per diffusers target, as a row block (what peft LoRAs patch). The
targets' widths come from the weight itself: each of q, k and v is as wide as the layer's input (the hidden size),
FLUX's ``proj_mlp`` takes the rest of ``linear1``. Rows that the original stores as [shift, scale] against diffusers'
[scale, shift] (``final_layer.adaLN_modulation.1``; SD3's last, ``context_pre_only`` context adaLN, the one whose
output is 2 x its input) are marked ``halves_swapped``: the module's rows are the tensor's with its halves exchanged.

Header facts only, no numpy: a header-level reader (verify's ``--base``) can use it as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ..canonical import ModuleKey
from ..formats import fused_targets, mmdit
from ..formats.paths import with_text_model
from ..safetensors_io import SafetensorsHeader

TRANSFORMER_PREFIXES = ("model.diffusion_model.", "")
_BLOCK_HEADS = {"double_blocks": "flux", "single_blocks": "flux", "joint_blocks": "sd3"}
# first segments of the original models' top-level modules: a cheap filter before any regex
_HEADS = frozenset(native.split(".", 1)[0] for table in mmdit.FAMILIES.values() for native in table)
_TEXT_ENCODERS = (("text_encoders.clip_l.transformer.", "clip_l"), ("text_encoders.clip_g.transformer.", "clip_g"),
                  ("text_encoders.t5xxl.transformer.", "t5xxl"))
_CONTEXT_NORM = re.compile(r"transformer_blocks\.\d+\.norm1_context\.linear")


def detect(header: SafetensorsHeader) -> tuple[str, str] | None:
    """(transformer key prefix, family ``flux``/``sd3``) when the checkpoint names SD3/FLUX blocks, else None."""
    for prefix in TRANSFORMER_PREFIXES:
        families = set()
        for key in header.tensors:
            if key.startswith(prefix):
                head = key[len(prefix):].split(".", 1)[0]
                if head in _BLOCK_HEADS:
                    families.add(_BLOCK_HEADS[head])
        if len(families) == 1:
            return prefix, families.pop()
    return None


def single_file_modules(path: Path, header: SafetensorsHeader, prefix: str, family: str
                        ) -> Iterator[tuple[ModuleKey, dict]]:
    """(module, WeightLocation fields) for every transformer and text-encoder Linear/Conv weight of the file."""
    for key, info in header.tensors.items():
        if not key.endswith(".weight") or len(info.shape) not in (2, 4):
            continue
        if key.startswith(prefix):
            native = key[len(prefix):-len(".weight")]
            if native.split(".", 1)[0] in _HEADS:
                yield from _transformer(native, key, info.shape, family)
                continue
        for te_prefix, head in _TEXT_ENCODERS:
            if key.startswith(te_prefix):
                found = _text_encoder(head, key[len(te_prefix):-len(".weight")], family)
                if found is not None:
                    yield ModuleKey(*found), {"key": key}
                break


def _transformer(native: str, key: str, shape: tuple[int, ...], family: str) -> Iterator[tuple[ModuleKey, dict]]:
    path = mmdit.parse_dotted(native).get(family)
    if path is None:
        return
    yield ModuleKey("transformer", path), {"key": key, "halves_swapped": rows_swapped(path, shape)}
    targets = fused_targets(path)
    if len(targets) == 1 or len(shape) != 2:
        return
    sizes = target_rows(targets, shape)
    if sizes is None:  # a fused weight of a size the families do not have: addressed whole only
        return
    start = 0
    for target, size in zip(targets, sizes):
        yield ModuleKey("transformer", target), {"key": key, "rows": (start, start + size),
                                                  "shape": (size, shape[1])}
        start += size


def target_rows(targets: tuple[str, ...], shape: tuple[int, ...]) -> list[int] | None:
    """Rows per target of a fused [out, in] weight: q, k and v are ``in`` wide, FLUX's proj_mlp takes the rest."""
    out, width = shape[0], shape[1]
    mlp = [t.endswith("proj_mlp") for t in targets]
    rest = out - width * (len(targets) - sum(mlp))
    if sum(mlp) > 1 or rest < 0 or (rest > 0) != any(mlp):
        return None
    return [rest if is_mlp else width for is_mlp in mlp]


def rows_swapped(path: str, shape: tuple[int, ...]) -> bool:
    """Whether the original stores this module's rows as [shift, scale] where diffusers has [scale, shift]."""
    if not shape or shape[0] % 2:  # no halves to exchange (not a weight any real model has)
        return False
    if path in mmdit.SCALE_SHIFT_SWAPPED:
        return True
    return bool(_CONTEXT_NORM.fullmatch(path)) and len(shape) == 2 and shape[0] == 2 * shape[1]


def _text_encoder(head: str, path: str, family: str) -> tuple[str, str] | None:
    if head == "t5xxl":
        # T5's Linears are in its blocks; the embeddings and the position bias table are 2-D but no Linear
        if not path.startswith("encoder.block.") or "relative_attention_bias" in path:
            return None
        return ("text_encoder_2" if family == "flux" else "text_encoder_3"), path
    if "embeddings." in path:
        return None
    component = "text_encoder" if head == "clip_l" else "text_encoder_2"
    return component, with_text_model(component, path)[0]
