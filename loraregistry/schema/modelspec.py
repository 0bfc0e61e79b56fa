"""Stability ModelSpec 1.0.1 (``modelspec.*``): a tolerant import model, its mapping, and our projection.

References: Stability-AI/ModelSpec README, sd-scripts ``library/sai_model_spec.py``. sd-scripts writes
``<base>/lora`` for every adapter it trains, LyCORIS ones included, so we do too. Its implementation
values: SDXL LoRA -> Stability's generative-models repo, FLUX -> BFL's flux repo, everything else
(SD1, SD2, SD3 LoRA) -> ``diffusers``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..architectures.ids import ARCHITECTURES, Architecture, resolve
from ._foreign import Findings, short
from .light import light_record

if TYPE_CHECKING:
    from .metadata import AdapterMetadata

PREFIX = "modelspec."
SPEC_VERSION = "1.0.1"
IMPL_STABILITY = "https://github.com/Stability-AI/generative-models"
IMPL_FLUX = "https://github.com/black-forest-labs/flux"
IMPL_DIFFUSERS = "diffusers"
UNTITLED = "Untitled LoRA"  # the MUST title when the record has no name

# Titles that are placeholders, not names: sd-scripts writes 'LoRA@<unix time>' when no title is given.
_PLACEHOLDER_TITLE = re.compile(r"^(?:(?:LoRA|TextualInversion|Checkpoint)@[\d.]+|" + re.escape(UNTITLED) + ")$")


# The ``modelspec.*`` keys lorareg reads (without their prefix), by light kind (``light.KINDS``); the pydantic
# model in ``foreign_models`` declares the same fields with the same types (a test holds them together).
FIELDS = {
    "sai_model_spec": "str", "architecture": "str", "implementation": "str", "title": "str", "description": "str",
    "author": "str", "date": "timestamp", "hash_sha256": "sha256", "license": "str", "usage_hint": "str",
    "tags": "list", "trigger_phrase": "list", "prediction_type": "prediction_type", "resolution": "resolution",
    "merged_from": "list",
}


_DIRECT = {
    "description": "description",
    "author": "author",
    "license": "license",
    "usage_hint": "usage_hint",
    "tags": "tags",
    "trigger_phrase": "trigger_words",
    "date": "provenance.created_at",
    "hash_sha256": "tensor_sha256",
    "prediction_type": "base.prediction_type",
    "resolution": "base.resolution",
}


def is_modelspec_key(key: str) -> bool:
    return key.startswith(PREFIX)


def read_modelspec(header: Mapping[str, str]) -> Findings:
    """What the ``modelspec.*`` keys of a header say about the canonical record."""
    found = Findings("modelspec")
    raw = {k.removeprefix(PREFIX): v for k, v in header.items() if is_modelspec_key(k)}
    spec = light_record(FIELDS, raw)
    if spec is None:  # a value the light reader cannot vouch for: the pydantic model judges it, with its warning
        from .foreign_models import ModelSpecMetadata

        spec = ModelSpecMetadata.read(raw, where=PREFIX, warnings=found.warnings)
    for name, path in _DIRECT.items():
        found.put(path, getattr(spec, name), PREFIX + name)
    if spec.title and not _PLACEHOLDER_TITLE.match(spec.title):
        found.put("name", spec.title, PREFIX + "title")
    if spec.merged_from:
        found.put("provenance.operation", "merge", PREFIX + "merged_from")
        found.put("provenance.parents", [{"name": name} for name in spec.merged_from], PREFIX + "merged_from")
    if spec.architecture:
        arch = resolve(spec.architecture)
        if arch is None:
            found.warnings.append(f"{PREFIX}architecture = {short(spec.architecture)}: unknown base; "
                                  "architecture left unset")
        else:
            found.put("base.architecture", arch.id, PREFIX + "architecture")
    return found


# --- projection -----------------------------------------------------------------------------------

OWNED_KEYS = frozenset(PREFIX + name for name in (
    "sai_model_spec", "architecture", "implementation", "title", "resolution", "description", "author", "date",
    "hash_sha256", "license", "usage_hint", "tags", "trigger_phrase", "prediction_type", "merged_from",
))


def implementation(arch: Architecture) -> str:
    if arch.family == "sdxl":
        return IMPL_STABILITY
    if arch.family == "flux":
        return IMPL_FLUX
    return IMPL_DIFFUSERS


def modelspec_projection(meta: AdapterMetadata) -> dict[str, str]:
    """ModelSpec keys for the record; none at all when the architecture is unknown (it is a MUST key)."""
    arch = ARCHITECTURES.get(meta.base.architecture or "")
    if arch is None:
        return {}
    width, height = meta.base.resolution or (arch.resolution, arch.resolution)
    prediction = meta.base.prediction_type or arch.prediction_type
    provenance = meta.provenance
    values = {
        "sai_model_spec": SPEC_VERSION,
        "architecture": arch.modelspec_lora,
        "implementation": implementation(arch),
        "title": meta.name or UNTITLED,
        "resolution": f"{width}x{height}",
        "prediction_type": prediction if prediction in ("epsilon", "v") else None,  # ModelSpec has no 'flow'
        "description": meta.description,
        "author": meta.author,
        "date": provenance.created_at.isoformat() if provenance.created_at else None,
        "hash_sha256": f"0x{meta.tensor_sha256}" if meta.tensor_sha256 else None,
        "license": meta.license,
        "usage_hint": meta.usage_hint,
        "tags": ", ".join(meta.tags) or None,
        "trigger_phrase": ", ".join(meta.trigger_words) or None,
    }
    if provenance.operation == "merge" and provenance.parents:
        values["merged_from"] = ", ".join(p.name or p.tensor_sha256 or p.sha256 or "" for p in provenance.parents)
    return {PREFIX + key: value for key, value in values.items() if value is not None}
