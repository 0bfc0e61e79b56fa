"""The model card (README.md) of a pushed adapter, built with huggingface_hub's ``ModelCard``.

lorareg owns the YAML keys it writes and the text between ``BEGIN``/``END``; everything else a user
wrote in an existing card (other YAML keys, extra tags, text before or after the markers) is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from huggingface_hub import ModelCard, ModelCardData

from ..architectures import Architecture
from ..schema import AdapterMetadata

BEGIN = "<!-- lorareg:begin (rewritten by every `lorareg push`: write your own text outside this section) -->"
END = "<!-- lorareg:end -->"
_BEGIN_PREFIX = "<!-- lorareg:begin"  # found whatever wording BEGIN had when it was written
ADULT_TAG = "not-for-all-audiences"
BASE_TAGS = ("text-to-image", "lora", "diffusers", "template:sd-lora")
MANAGED_KEYS = ("base_model", "base_model_relation", "license", "library_name", "pipeline_tag", "instance_prompt",
                "widget")


@dataclass(frozen=True)
class Sample:
    """A sample image in the repo and the prompt that made it."""

    path_in_repo: str
    prompt: str


@dataclass(frozen=True)
class Figure:
    """An image about the adapter (a training loss plot) in the repo, and its caption."""

    path_in_repo: str
    caption: str


@dataclass(frozen=True)
class CardInput:
    repo_id: str
    filename: str
    metadata: AdapterMetadata
    architecture: Architecture | None
    sha256: str
    samples: Sequence[Sample] = ()
    figures: Sequence[Figure] = ()


def base_model(meta: AdapterMetadata, arch: Architecture | None) -> str | None:
    """The record's base model id when it names one (a fine-tune), else the architecture's canonical repo."""
    return meta.base.model_id or (arch.hub_repos[0] if arch else None)


def card_tags(meta: AdapterMetadata, arch: Architecture | None) -> list[str]:
    tags = [*BASE_TAGS, *([arch.hub_tag] if arch else []), *meta.tags]
    if meta.content_rating == "adult":
        tags.append(ADULT_TAG)
    return list(dict.fromkeys(tags))


def build_card(card: CardInput, *, existing: str | None = None) -> str:
    """README.md text for ``card``, merged into ``existing`` (the repo's current README) when given."""
    meta = card.metadata
    old = ModelCard(existing, ignore_metadata_errors=True) if existing else None
    data = old.data.to_dict() if old else {}
    for key in MANAGED_KEYS:
        data.pop(key, None)
    user_tags = [t for t in data.pop("tags", None) or [] if isinstance(t, str)]
    prompt = ", ".join(meta.trigger_words)
    ours = {
        "base_model": base_model(meta, card.architecture),
        "base_model_relation": "adapter",
        "license": meta.license,
        "library_name": "diffusers",
        "pipeline_tag": "text-to-image",
        "tags": list(dict.fromkeys([*card_tags(meta, card.architecture), *user_tags])),
        "instance_prompt": prompt or None,
        "widget": [{"text": s.prompt, "output": {"url": s.path_in_repo}} for s in card.samples] or None,
    }
    data.update({k: v for k, v in ours.items() if v is not None})
    yaml = ModelCardData(**data, ignore_metadata_errors=True).to_yaml()
    section = f"{BEGIN}\n{_section(card)}\n{END}"
    return f"---\n{yaml}\n---\n{_merge_text(old.text if old else '', section)}"


def _merge_text(text: str, section: str) -> str:
    if _BEGIN_PREFIX in text and END in text[text.index(_BEGIN_PREFIX):]:
        start = text.index(_BEGIN_PREFIX)
        end = text.index(END, start) + len(END)
        return text[:start] + section + text[end:]
    rest = text.strip("\n")
    return f"\n{section}\n" + (f"\n{rest}\n" if rest else "")


def _section(card: CardInput) -> str:
    meta = card.metadata
    arch = card.architecture
    name = meta.name or PurePosixPath(card.filename).stem
    stem = PurePosixPath(card.filename).stem
    weight = meta.recommended_weight if meta.recommended_weight is not None else 1.0
    triggers = ", ".join(meta.trigger_words)
    prompt = triggers or (card.samples[0].prompt if card.samples else "a photo")
    base = base_model(meta, arch) or "<base model repo>"
    lines = [f"# {name}", ""]
    if meta.description:
        lines += [meta.description, ""]
    if card.samples:
        lines += ["<Gallery />", ""]
    if meta.trigger_words:
        lines += ["## Trigger words", "", "Use these in the prompt: " + ", ".join(f"`{w}`" for w in meta.trigger_words),
                  ""]
    lines += [
        "## Use with diffusers", "",
        "```py",
        "import torch",
        "from diffusers import AutoPipelineForText2Image", "",
        f'pipeline = AutoPipelineForText2Image.from_pretrained("{base}", torch_dtype=torch.float16).to("cuda")',
        f'pipeline.load_lora_weights("{card.repo_id}", weight_name="{card.filename}")',
        f'image = pipeline("{_py(prompt)}", cross_attention_kwargs={{"scale": {weight:g}}}).images[0]',
        "```", "",
        "## Use with ComfyUI or AUTOMATIC1111", "",
        f"Download [`{card.filename}`](./{card.filename}) into `models/Lora` (AUTOMATIC1111) or `models/loras` "
        "(ComfyUI).", "",
        f"- AUTOMATIC1111 / Forge prompt: `<lora:{stem}:{weight:g}>" + (f" {triggers}`" if triggers else "`"),
        f"- ComfyUI: a *LoraLoader* node with `{card.filename}`, strength {weight:g}"
        + (f"; put `{triggers}` in the prompt." if triggers else "."), "",
        "## Details", "",
        "| | |", "|---|---|",
        f"| Base | {arch.title + f' (`{arch.id}`)' if arch else 'unknown'} |",
        f"| Network | {_network(meta)} |",
        f"| Content rating | {meta.content_rating} |",
        f"| sha256 | `{card.sha256}` (AutoV2 `{card.sha256[:10]}`) |",
        "| Metadata | [`lorareg.json`](./lorareg.json) (verified with lorareg before upload) |",
    ]
    if card.figures:
        lines += ["", "## Training", ""]
        for figure in card.figures:
            lines += [f"![{_md(figure.caption)}](./{figure.path_in_repo})", "", _md(figure.caption), ""]
        lines.pop()
    return "\n".join(lines)


def _network(meta: AdapterMetadata) -> str:
    net = meta.network
    parts = [net.type or "lora"]
    if net.rank:
        parts.append(f"rank {net.rank}")
    if net.alpha:
        parts.append(f"alpha {net.alpha:g}")
    return ", ".join(parts)


def _md(text: str) -> str:
    """``text`` as literal markdown: no markup, links or HTML of its own."""
    return "".join(f"\\{c}" if c in "\\`*_[]()<>#!|" else c for c in " ".join(text.split()))


def _py(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
