"""The LRG6xx codes ("consumer" family): why a given tool would not fully load an adapter.

Plain data on purpose: ``verify/findings.py`` may import ``CONSUMER_ROWS`` into its one table without an
import cycle. Until it does, ``consumer_finding`` builds the same ``Finding`` objects directly.
"""

from __future__ import annotations

FAMILY = "consumer"
FAMILY_BLURB = ("Whether a given tool (diffusers, peft, ComfyUI, InvokeAI, A1111/Forge, kohya) loads the adapter "
                "(LRG6xx).")

# (code, name, severity, title, description): the row layout of ``findings._TABLE``.
CONSUMER_ROWS: tuple[tuple[str, str, str, str, str], ...] = (
    ("LRG600", "consumer-refuses-file", "error", "The tool refuses the whole file",
     "The loader raises (or logs an error and gives up): nothing of the adapter is applied."),
    ("LRG601", "consumer-loads-nothing", "error", "The tool loads nothing, silently",
     "The loader returns without an error but no module is patched (keys it does not look for)."),
    ("LRG602", "consumer-skips-modules", "warning", "The tool skips some modules",
     "Some modules are not applied (unmatched names, shapes it cannot use, components it lacks)."),
    ("LRG603", "consumer-ignores-keys", "warning", "The tool ignores some keys",
     "Keys that belong to no module the loader knows (foreign or bundled tensors) are dropped."),
    ("LRG604", "consumer-drops-dora", "warning", "The tool drops the DoRA magnitude",
     "DoRA modules load as plain LoRA: the magnitude vector is discarded, so the result differs."),
    ("LRG605", "consumer-misfiles-adapter", "warning", "The tool files the adapter under the wrong base",
     "The UI decides SD1/SD2/SDXL from metadata alone; missing or wrong keys hide or mis-file the adapter."),
    ("LRG606", "consumer-base-unknown", "info", "Module existence not checked",
     "No base architecture was detected or given, so whether each module exists in the model is assumed."),
    ("LRG607", "consumer-version-outside-rules", "info", "Installed version outside the rules' range",
     "The installed tool's version is outside the range the consumer rules were written from."),
    ("LRG608", "consumer-not-modelled", "info", "The tool's rules do not model this family",
     "No rules for this loader and base family: no claim either way (fails --target only under --strict)."),
)

CONSUMER_CODES: dict[str, tuple[str, str, str, str, str]] = {row[1]: row for row in CONSUMER_ROWS}


def consumer_finding(name: str, message: str, *, key: str | None = None, hint: str | None = None):
    """A ``Finding`` for one of the codes above (by short name)."""
    from ..findings import Finding

    code, short, severity, _, _ = CONSUMER_CODES[name]
    return Finding(code=code, name=short, severity=severity, family=FAMILY, message=message, key=key, hint=hint)
