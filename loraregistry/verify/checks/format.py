"""Format checks: which key format the file uses, and the keys that fit none."""

from __future__ import annotations

from ...safetensors_io import SafetensorsHeader
from ..context import Context
from ..findings import Finding, finding

BUNDLED_EMBEDDING_PREFIX = "bundle_emb."
_SHOWN = 5
_NOT_IN_DIFFUSERS = frozenset({"loha", "lokr", "full"})


def _examples(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_SHOWN])
    return shown + (f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def unreadable_keys(header: SafetensorsHeader) -> list[Finding]:
    """For a file whose keys no format understands (AdapterFile could not map them)."""
    keys = list(header.tensors)
    if not keys:
        return [finding("no-tensors", "got 0 tensors, expected the factors of at least one module",
                        hint="the file holds metadata only; export the adapter's weights")]
    return [finding("unknown-format", f"got {len(keys)} keys no known format understands: {_examples(keys)}",
                    key=keys[0], hint="expected kohya (lora_unet_*), peft (*.lora_A.weight), diffusers or LyCORIS "
                                      "keys; is this a full checkpoint or an embedding rather than a LoRA?")]


def check_keys(ctx: Context) -> list[Finding]:
    adapter = ctx.adapter
    findings: list[Finding] = []
    if adapter.format == "mixed":
        from ...formats import detect_format

        counts = detect_format(list(adapter.header.tensors)).counts
        spelled = ", ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        findings.append(finding("mixed-formats", f"got keys in {len(counts)} formats ({spelled}), expected one",
                                hint="diffusers refuses mixed files; convert with "
                                     "`lorareg convert FILE --to <format> -o OUT`"))
    bundled = [k for k in adapter.unknown_keys if k.startswith(BUNDLED_EMBEDDING_PREFIX)]
    unknown = [k for k in adapter.unknown_keys if not k.startswith(BUNDLED_EMBEDDING_PREFIX)]
    if bundled:
        names = sorted({k[len(BUNDLED_EMBEDDING_PREFIX):].split(".", 1)[0] for k in bundled})
        findings.append(finding("bundled-embeddings", f"got {len(bundled)} bundled embedding tensors "
                                f"({', '.join(names[:_SHOWN])}): only A1111 loads them", key=bundled[0],
                                hint="ship the embeddings as separate textual-inversion files for other loaders"))
    if unknown:
        findings.append(finding("unknown-keys", f"got {len(unknown)} keys that fit no module of any format: "
                                f"{_examples(unknown)}", key=unknown[0],
                                hint="diffusers refuses the whole file; remove the keys or convert the adapter"))
    if adapter.mapping.dialect.get("component_prefix") == "no":
        findings.append(finding("no-component-prefix", f"got {adapter.format} keys without a component prefix "
                                f"(e.g. {next(iter(adapter.header.tensors))!r}), expected 'unet.' / 'text_encoder.'",
                                hint="diffusers' load_lora_weights loads nothing from it; convert with "
                                     "`lorareg convert FILE --to peft --dialect component_prefix=yes -o OUT` to add "
                                     "the prefixes"))
    lycoris = sorted({m.algo for m in adapter.modules.values()} & _NOT_IN_DIFFUSERS)
    if lycoris:
        findings.append(finding("algorithm-not-in-diffusers", f"got {'/'.join(lycoris)} modules, which diffusers "
                                "cannot load (it refuses the whole file); ComfyUI and A1111 load them",
                                hint="for diffusers, load it with LyCORIS, or bake it into the base model"))
    unchecked = [str(k) for k, problems in ctx.factor_problems.items()
                 if problems and any(p.name == "unchecked-algorithm" for p in problems)]  # most have none
    if unchecked:
        findings.append(finding("unchecked-algorithm", f"got {len(unchecked)} modules of an algorithm verify does "
                                f"not check: {_examples(unchecked)}", key=unchecked[0],
                                hint="their shapes and values were not verified"))
    return findings
