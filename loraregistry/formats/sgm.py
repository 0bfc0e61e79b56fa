"""SGM/LDM UNet module paths <-> diffusers UNet module paths, for the standard SD UNet layout.

The original (CompVis/SGM) UNet numbers its blocks flat: ``input_blocks.N.M``, ``middle_block.M``,
``output_blocks.N.M``; diffusers nests them: ``down_blocks.B.{resnets,attentions}.J``. With
``layers_per_block`` layers per level, input block N >= 1 is level ``(N-1) // (lpb+1)``, layer
``(N-1) % (lpb+1)`` (the last layer of a level is its downsampler); output block N is level
``N // (lpb+1)``, layer ``N % (lpb+1)``. Inside a block, ``M = 0`` is the ResNet, ``M = 1`` the
attention, and the up-sampler sits after them (``M = 2``, or ``M = 1`` in an up block without
attention). Attention internals share names; ResNet internals are renamed (``in_layers.2`` = ``conv1``).

The map is a bijection; the only place the number of levels matters is the up-sampler of up block 0:
SD1/SD2 (4 levels) have no attention there (``output_blocks.2.1.conv``), SDXL (3 levels) has
(``output_blocks.2.2.conv``). Paths are module paths without the parameter name, without the
``model.diffusion_model.`` prefix of single-file checkpoints.
"""

from __future__ import annotations

from ..lazy_re import lazy

_RESNET_SGM_TO_DIFFUSERS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_RESNET_DIFFUSERS_TO_SGM = {v: k for k, v in _RESNET_SGM_TO_DIFFUSERS.items()}

_TOP_SGM_TO_DIFFUSERS = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}
_TOP_DIFFUSERS_TO_SGM = {v: k for k, v in _TOP_SGM_TO_DIFFUSERS.items()}

SGM_ROOTS = frozenset({"input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out"})
DIFFUSERS_ROOTS = frozenset({
    "down_blocks", "mid_block", "up_blocks", "conv_in", "conv_out", "conv_norm_out", "time_embedding",
    "add_embedding",
})

_SGM_BLOCK = lazy(r"(input_blocks|output_blocks)\.(\d+)\.(\d+)(?:\.(.+))?")
_SGM_MIDDLE = lazy(r"middle_block\.(\d+)(?:\.(.+))?")
_DIFFUSERS_BLOCK = lazy(
    r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(?:\.(.+))?"
)
_DIFFUSERS_MID = lazy(r"mid_block\.(resnets|attentions)\.(\d+)(?:\.(.+))?")


class LayoutError(ValueError):
    """A path that needs the number of levels to be mapped, and none was given."""


def _join(*parts: str | None) -> str:
    return ".".join(p for p in parts if p)


def _resnet_rest_to_diffusers(rest: str | None) -> str | None:
    if rest is None:
        return ""
    for sgm, diff in _RESNET_SGM_TO_DIFFUSERS.items():
        if rest == sgm or rest.startswith(sgm + "."):
            return diff + rest[len(sgm):]
    return None


def _resnet_rest_to_sgm(rest: str | None) -> str | None:
    if rest is None:
        return ""
    for diff, sgm in _RESNET_DIFFUSERS_TO_SGM.items():
        if rest == diff or rest.startswith(diff + "."):
            return sgm + rest[len(diff):]
    return None


def _check_level(level: int, levels: int | None) -> bool:
    return levels is None or level < levels


def sgm_to_diffusers(path: str, *, levels: int | None = None, layers_per_block: int = 2) -> str | None:
    """The diffusers path of an SGM/LDM UNet module path, or None when it is not one.

    ``levels`` (number of down blocks) is optional here; when given, block indices are checked
    against it.
    """
    for sgm, diff in _TOP_SGM_TO_DIFFUSERS.items():
        if path == sgm or path.startswith(sgm + "."):
            return diff + path[len(sgm):]
    per_level = layers_per_block + 1
    if m := _SGM_BLOCK.fullmatch(path):
        kind, n, sub, rest = m[1], int(m[2]), int(m[3]), m[4]
        if kind == "input_blocks":
            if n == 0:
                return None  # input_blocks.0.0 (conv_in) was handled above
            level, layer = divmod(n - 1, per_level)
            if not _check_level(level, levels):
                return None
            if layer == layers_per_block:
                return f"down_blocks.{level}.downsamplers.0.conv" if (sub, rest) == (0, "op") else None
            base = f"down_blocks.{level}"
        else:
            level, layer = divmod(n, per_level)
            if not _check_level(level, levels):
                return None
            if rest == "conv" and sub in (1, 2):
                return f"up_blocks.{level}.upsamplers.0.conv" if layer == layers_per_block else None
            base = f"up_blocks.{level}"
        if sub == 0:
            inner = _resnet_rest_to_diffusers(rest)
            return None if inner is None else _join(base, "resnets", str(layer), inner)
        if sub == 1:
            return _join(base, "attentions", str(layer), rest)
        return None
    if m := _SGM_MIDDLE.fullmatch(path):
        sub, rest = int(m[1]), m[2]
        if sub in (0, 2):
            inner = _resnet_rest_to_diffusers(rest)
            return None if inner is None else _join("mid_block.resnets", str(sub // 2), inner)
        if sub == 1:
            return _join("mid_block.attentions.0", rest)
    return None


def diffusers_to_sgm(path: str, *, levels: int | None = None, layers_per_block: int = 2) -> str | None:
    """The SGM/LDM path of a diffusers UNet module path, or None when it is not one.

    Raises LayoutError for the up-sampler of up block 0 when ``levels`` is not given (it is
    ``output_blocks.2.1.conv`` with 4 levels and ``output_blocks.2.2.conv`` with 3).
    """
    for diff, sgm in _TOP_DIFFUSERS_TO_SGM.items():
        if path == diff or path.startswith(diff + "."):
            return sgm + path[len(diff):]
    per_level = layers_per_block + 1
    if m := _DIFFUSERS_BLOCK.fullmatch(path):
        kind, level, part, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if not _check_level(level, levels):
            return None
        if kind == "down_blocks":
            if part == "downsamplers":
                ok = j == 0 and rest == "conv" and (levels is None or level < levels - 1)
                return f"input_blocks.{1 + level * per_level + layers_per_block}.0.op" if ok else None
            if part == "upsamplers" or j >= layers_per_block:
                return None
            n = 1 + level * per_level + j
        else:
            if part == "downsamplers":
                return None
            if part == "upsamplers":
                if j != 0 or rest != "conv" or (levels is not None and level >= levels - 1):
                    return None
                n = level * per_level + layers_per_block
                if level != 0:
                    return f"output_blocks.{n}.2.conv"
                if levels is None:
                    raise LayoutError(f"{path}: the SGM name depends on the number of UNet levels (3 or 4)")
                return f"output_blocks.{n}.{1 if levels == 4 else 2}.conv"
            if j > layers_per_block:
                return None
            n = level * per_level + j
        if part == "resnets":
            inner = _resnet_rest_to_sgm(rest)
            return None if inner is None else _join(f"{_sgm_kind(kind)}.{n}.0", inner)
        return _join(f"{_sgm_kind(kind)}.{n}.1", rest)
    if m := _DIFFUSERS_MID.fullmatch(path):
        part, j, rest = m[1], int(m[2]), m[3]
        if part == "resnets" and j in (0, 1):
            inner = _resnet_rest_to_sgm(rest)
            return None if inner is None else _join(f"middle_block.{j * 2}", inner)
        if part == "attentions" and j == 0:
            return _join("middle_block.1", rest)
    return None


def _sgm_kind(diffusers_kind: str) -> str:
    return "input_blocks" if diffusers_kind == "down_blocks" else "output_blocks"


def infer_levels(diffusers_paths: list[str] | set[str] | tuple[str, ...]) -> int | None:
    """3 or 4 UNet levels when the paths tell (SD1/SD2 have down_blocks.3 and attention in level 0;
    SDXL has add_embedding), else None."""
    for path in diffusers_paths:
        if path.startswith(("down_blocks.3.", "up_blocks.3.", "down_blocks.0.attentions.")):
            return 4
        if path.startswith(("add_embedding.", "up_blocks.0.attentions.")):
            return 3
    return None


def levels_from_sgm(path: str) -> int | None:
    """3 or 4 levels when one SGM path tells (the spelling of up block 0's up-sampler, deep blocks)."""
    if path == "output_blocks.2.1.conv":
        return 4
    if path == "output_blocks.2.2.conv" or path.startswith("label_emb."):
        return 3
    m = _SGM_BLOCK.fullmatch(path)
    if not m:
        return None
    kind, n, sub, rest = m[1], int(m[2]), int(m[3]), m[4]
    if n > 8 or (kind == "input_blocks" and n in (1, 2) and sub == 1):
        return 4  # deeper than SDXL, or attention in level 0 (SDXL has none there)
    if kind == "output_blocks" and n in (0, 1, 2) and sub == 1 and rest != "conv":
        return 3  # attention in up block 0 (SD1/SD2 have none there)
    return None
