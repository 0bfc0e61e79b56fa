"""Facts about canonical module paths shared by the formats: which component a bare path belongs to,
and the CLIP ``text_model.`` level that canonical paths always carry."""

from __future__ import annotations

from .sgm import DIFFUSERS_ROOTS as UNET_ROOTS

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")

TRANSFORMER_ROOTS = frozenset({
    "transformer_blocks", "single_transformer_blocks", "x_embedder", "context_embedder", "pos_embed",
    "time_text_embed", "norm_out", "proj_out",
})
TEXT_ENCODER_ROOTS = frozenset({
    "text_model", "encoder", "embeddings", "final_layer_norm", "text_projection", "shared",
})

# CLIPTextModel in transformers 5 has no ``text_model`` level; these paths sit under it in canonical form.
_CLIP_INNER = ("encoder.layers.", "embeddings.", "final_layer_norm")


def is_t5_path(path: str) -> bool:
    return path.startswith(("encoder.block.", "shared"))


def lacks_text_model(path: str) -> bool:
    """A CLIP path spelled without the ``text_model.`` level."""
    return path.startswith(_CLIP_INNER)


def with_text_model(component: str, path: str) -> tuple[str, str | None]:
    """Canonical path for a text-encoder path, and the ``text_model`` dialect fact ("yes"/"no") when
    the path is a CLIP one (None otherwise)."""
    if component not in TEXT_ENCODERS:
        return path, None
    if path.startswith("text_model."):
        return path, "yes"
    if lacks_text_model(path):
        return "text_model." + path, "no"
    return path, None


def spell_text_model(component: str, path: str, dialect: dict[str, str]) -> str:
    """Inverse of ``with_text_model``: drop ``text_model.`` where the dialect says the file does."""
    if dialect.get(text_model_field(component)) == "no" and path.startswith("text_model."):
        return path[len("text_model."):]
    return path


def text_model_field(component: str) -> str:
    return f"{component}.text_model"


def guess_component(path: str) -> str | None:
    """The component of a path that carries no component prefix, when its shape tells."""
    root = path.split(".", 1)[0]
    if root in UNET_ROOTS:
        return "unet"
    if root in TRANSFORMER_ROOTS:
        return "transformer"
    if path.startswith("text_model.") or lacks_text_model(path):
        return "text_encoder"
    return None  # T5 and anything else: the caller must say
