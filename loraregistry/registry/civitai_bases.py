"""Base models as people name them: Civitai ``baseModel`` values and A1111 ``sd version`` onto architectures.

Pony, Illustrious and NoobAI are all SDXL by shape (a LoRA for one loads into the others) but not
interchangeable in practice, so the registry keeps two facts: the architecture (what verify judges
shape-compatibility by) and the finer base people chose (the "sub-base", as declared by a sidecar or Civitai).

A name that maps to no architecture lorareg models (Flux.1 Kontext, video models, ...) still keeps its
family where one is known, so a search by the name finds it, but no shape claim is made.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SubBase:
    label: str  # as Civitai spells it: shown to users and stored as the entry's sub_base
    architecture: str | None  # lorareg architecture id, None where lorareg models no such shapes
    family: str | None
    finer: bool  # True: narrower than the architecture (Pony within sdxl-base); a search by it filters by it


def _row(label: str, architecture: str | None, family: str | None, finer: bool = False) -> SubBase:
    return SubBase(label, architecture, family, finer)


# Civitai's baseModel values (the model-version API and Civitai Helper's .civitai.info carry them verbatim).
_CIVITAI: tuple[SubBase, ...] = (
    _row("SD 1.4", "sd1", "sd1"),
    _row("SD 1.5", "sd1", "sd1"),
    _row("SD 1.5 LCM", "sd1", "sd1", finer=True),
    _row("SD 1.5 Hyper", "sd1", "sd1", finer=True),
    _row("SD 2.0", "sd2-512", "sd2"),
    _row("SD 2.1", "sd2-512", "sd2"),
    _row("SD 2.0 768", "sd2-768-v", "sd2"),
    _row("SD 2.1 768", "sd2-768-v", "sd2"),
    _row("SDXL 0.9", "sdxl-base", "sdxl"),
    _row("SDXL 1.0", "sdxl-base", "sdxl"),
    _row("SDXL 1.0 LCM", "sdxl-base", "sdxl", finer=True),
    _row("SDXL Turbo", "sdxl-base", "sdxl", finer=True),
    _row("SDXL Lightning", "sdxl-base", "sdxl", finer=True),
    _row("SDXL Hyper", "sdxl-base", "sdxl", finer=True),
    _row("Pony", "sdxl-base", "sdxl", finer=True),
    _row("Illustrious", "sdxl-base", "sdxl", finer=True),
    _row("NoobAI", "sdxl-base", "sdxl", finer=True),
    _row("SDXL 1.0 Refiner", "sdxl-refiner", "sdxl"),
    _row("SD 3", "sd3-medium", "sd3"),
    # SD 3.5 reshaped the MMDiT (Medium is MMDiT-X, Large is wider): each has its own fingerprint.
    _row("SD 3.5 Medium", "sd35-medium", "sd3"),
    _row("SD 3.5 Large", "sd35-large", "sd3"),
    _row("SD 3.5 Large Turbo", "sd35-large", "sd3", finer=True),
    _row("Flux.1 D", "flux1-dev", "flux"),
    _row("Flux.1 S", "flux1-schnell", "flux"),
)

# A1111/Forge sidecars say "sd version": SD1, SD2, SDXL or Unknown (Forge adds SD3, Flux). SD2 does not say
# which prediction type, so it names a family and no architecture.
_A1111: dict[str, SubBase] = {
    "sd1": _row("SD1", "sd1", "sd1"),
    "sd2": _row("SD2", None, "sd2"),
    "sdxl": _row("SDXL", "sdxl-base", "sdxl"),
    "sd3": _row("SD3", None, "sd3"),
    "flux": _row("Flux", None, "flux"),
}

_BY_NAME = {row.label.lower(): row for row in _CIVITAI}


def civitai_base(name: object) -> SubBase | None:
    """The row for a Civitai ``baseModel`` value (case-insensitive), or None for a value not in the table."""
    if not isinstance(name, str):
        return None
    return _BY_NAME.get(" ".join(name.split()).lower())


def a1111_base(value: object) -> SubBase | None:
    """The row for an A1111/Forge sidecar's ``sd version``; None for ``Unknown`` and anything else."""
    if not isinstance(value, str):
        return None
    return _A1111.get(value.strip().lower())


def finer_base(name: str) -> SubBase | None:
    """The row when ``name`` is a finer base (Pony, Illustrious, ...): a search by it filters by sub-base."""
    row = civitai_base(name)
    return row if row is not None and row.finer else None


def known_labels() -> tuple[str, ...]:
    return tuple(row.label for row in _CIVITAI)
