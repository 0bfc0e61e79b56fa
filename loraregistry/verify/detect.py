"""Which base architecture an adapter is for: what its shapes fit, and what its metadata declares.

Detection counts, for every shipped fingerprint, the modules that exist there with a delta that loads
(shapes, kernel; kohya's 1x1-conv factors on Linear projections count as loading). Every architecture
whose fingerprint holds all modules is a candidate. Several candidates share shapes (sd2-512 and
sd2-768-v; flux1-dev and -schnell; a CLIP-L-only adapter fits every base with CLIP-L): the declared
architecture, then the declared prediction type / resolution, picks one, else all are reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import NamedTuple

from ..adapter import ModuleInfo
from ..architectures import ARCHITECTURES, Fingerprint, fingerprint, fingerprint_names
from ..canonical import ModuleKey
from ..errors import MetadataError
from ..record import FrozenRecord
from .shapes import Shape, fits


class Fit(FrozenRecord):
    """How one fingerprint holds an adapter's checkable modules."""

    fingerprint: str
    architectures: tuple[str, ...]  # architecture ids that share this fingerprint
    fitted: int
    total: int
    misfits: tuple[ModuleKey, ...]  # modules absent from the fingerprint, or whose shapes do not load

    def __init__(self, fingerprint: str, architectures: tuple[str, ...], fitted: int, total: int,
                 misfits: tuple[ModuleKey, ...] = ()) -> None:
        self._set(fingerprint=fingerprint, architectures=architectures, fitted=fitted, total=total, misfits=misfits)

    @property
    def fits_all(self) -> bool:
        return self.total > 0 and self.fitted == self.total


class Declaration(FrozenRecord):
    """What the metadata says the base is. ``sources`` maps the header key to the architecture id it names,
    in precedence order (lorareg record, modelspec, kohya, diffusers base model id)."""

    sources: dict[str, str]
    prediction_type: str | None
    resolution: int | None

    def __init__(self, sources: dict[str, str] | None = None, prediction_type: str | None = None,
                 resolution: int | None = None) -> None:
        self._set(sources={} if sources is None else sources, prediction_type=prediction_type, resolution=resolution)

    @property
    def architecture(self) -> str | None:
        return next(iter(self.sources.values()), None)

    @property
    def source(self) -> str | None:
        return next(iter(self.sources), None)


class Detection(FrozenRecord):
    """The result of matching an adapter against every fingerprint.

    ``architecture``: the one architecture the adapter is for, or None (no fit, or several candidates that
    nothing declared tells apart). ``candidates``: every architecture that holds all modules.
    ``decided_by``: ``shapes`` (one candidate), ``declared`` (declared architecture), ``prediction_type`` /
    ``resolution`` (declared facts), or None. ``fits``: per fingerprint, best first.
    """

    architecture: str | None
    candidates: tuple[str, ...]
    decided_by: str | None
    fits: tuple[Fit, ...]

    def __init__(self, architecture: str | None, candidates: tuple[str, ...], decided_by: str | None,
                 fits: tuple[Fit, ...]) -> None:
        self._set(architecture=architecture, candidates=candidates, decided_by=decided_by, fits=fits)

    @property
    def best(self) -> Fit | None:
        return self.fits[0] if self.fits and self.fits[0].fitted else None

    def fit_of(self, arch_id: str) -> Fit | None:
        return next((f for f in self.fits if arch_id in f.architectures), None)


def architectures_of(fingerprint_name: str) -> tuple[str, ...]:
    return tuple(a.id for a in ARCHITECTURES.values() if a.fingerprint == fingerprint_name)


def measure_fit(modules: Mapping[ModuleKey, ModuleInfo], deltas: Mapping[ModuleKey, Shape | None],
                fp: Fingerprint, architectures: tuple[str, ...] = ()) -> Fit:
    """Count the modules ``fp`` holds; modules whose factors make no delta are left out (reported elsewhere)."""
    return _fit(_checkable(modules, deltas), fp, architectures)


def _checkable(modules: Mapping[ModuleKey, ModuleInfo], deltas: Mapping[ModuleKey, Shape | None]
               ) -> list[tuple[ModuleKey, ModuleInfo, Shape]]:
    """The modules whose factors make a delta, with it: what every fingerprint is measured on."""
    return [(key, info, delta) for key, info in modules.items() if (delta := deltas.get(key)) is not None]


def _fit(checkable: list[tuple[ModuleKey, ModuleInfo, Shape]], fp: Fingerprint,
         architectures: tuple[str, ...]) -> Fit:
    misfits = []
    tables = {component: fp.table(component) for component in _components(fp)}
    # (algo, delta, spec) -> fits: adapters repeat a few shapes many times. A fingerprint's own specs live as long as
    # it does and it shares one per shape, so they are keyed by identity (a record's hash is a Python call per
    # module); a spec ``lookup`` builds (fused paths) may be a new object each time, so it is keyed by value.
    verdicts: dict[tuple, bool] = {}
    for key, info, delta in checkable:
        table = tables.get(key.component)
        spec = table.get(key.path) if table is not None else None
        if spec is not None:
            verdict_key: tuple = (info.algo, delta, id(spec))
        else:
            spec = fp.lookup(key.component, key.path) if table is not None else None
            verdict_key = (info.algo, delta, spec)
        verdict = verdicts.get(verdict_key)
        if verdict is None:
            verdict = verdicts[verdict_key] = fits(info, delta, spec)
        if not verdict:
            misfits.append(key)
    checked = len(checkable)
    return Fit(fp.name, architectures, checked - len(misfits), checked, tuple(misfits))


@lru_cache(maxsize=None)
def _components(fp: Fingerprint) -> frozenset[str]:
    return frozenset(fp.components)  # Fingerprint.components walks every module on each access


def detect_architecture(modules: Mapping[ModuleKey, ModuleInfo], deltas: Mapping[ModuleKey, Shape | None],
                        declared: Declaration | None = None) -> Detection:
    """Match the modules against every shipped fingerprint (see the module docstring)."""
    declared = declared or Declaration()
    fit_list = _fits(tuple((key, info.algo, delta) for key, info, delta in _checkable(modules, deltas)))
    candidates = tuple(a for f in fit_list if f.fits_all for a in f.architectures)
    architecture, decided_by = _choose(candidates, declared)
    return Detection(architecture, candidates, decided_by, tuple(fit_list))


@lru_cache(maxsize=32)
def _fits(signature: tuple[tuple[ModuleKey, str, Shape], ...]) -> tuple[Fit, ...]:
    """Every shipped fingerprint's fit, best first, for modules given as (key, algo, delta): all a fit depends on.
    Kept for the last signatures seen: adapters of one trainer and base repeat them file after file."""
    checkable = [(key, _Algo(algo), delta) for key, algo, delta in signature]
    fit_list = [_fit(checkable, fingerprint(name), architectures_of(name)) for name in fingerprint_names()]
    fit_list.sort(key=lambda f: (-f.fitted, f.fingerprint))
    return tuple(fit_list)


class _Algo(NamedTuple):
    """What ``fits`` reads of a module (its algorithm), standing in for the ModuleInfo of a cached signature."""

    algo: str


def _choose(candidates: tuple[str, ...], declared: Declaration) -> tuple[str | None, str | None]:
    if len(candidates) == 1:
        return candidates[0], "shapes"
    if not candidates:
        return None, None
    if declared.architecture in candidates:
        return declared.architecture, "declared"
    for fact, value in (("prediction_type", declared.prediction_type), ("resolution", declared.resolution)):
        if value is None:
            continue
        matching = [a for a in candidates if getattr(ARCHITECTURES[a], fact) == value]
        if len(matching) == 1:
            return matching[0], fact
    return None, None


# --- declared -----------------------------------------------------------------------------------


def read_declaration(header_metadata: Mapping[str, str]) -> Declaration:
    """The architecture every metadata convention declares, without merging them (verify compares them).

    Unknown or unparsable values are skipped here; the metadata checks report them.
    """
    from ..architectures import resolve
    from ..schema.diffusers_meta import read_diffusers
    from ..schema.kohya import read_kohya
    from ..schema.keys import HEADER_KEY
    from ..schema.modelspec import read_modelspec

    sources: dict[str, str] = {}
    prediction: str | None = None
    resolution: int | None = None
    if HEADER_KEY in header_metadata:
        from ..schema.metadata import read_header_value  # pydantic: only files with a record load it

        try:
            record, _ = read_header_value(header_metadata[HEADER_KEY])
        except MetadataError:
            record = None
        if record is not None:
            if record.base.architecture:
                sources[HEADER_KEY] = record.base.architecture
            prediction = record.base.prediction_type
            resolution = record.base.resolution[0] if record.base.resolution else None
    for reader in (read_modelspec, read_kohya, read_diffusers):
        found = reader(header_metadata).values
        arch = found.get("base.architecture")
        if arch is not None:
            sources.setdefault(arch.key, arch.value)
        model_id = found.get("base.model_id")
        by_repo = resolve(model_id.value) if model_id is not None else None
        if by_repo is not None:
            sources.setdefault(model_id.key, by_repo.id)
        if prediction is None and "base.prediction_type" in found:
            prediction = found["base.prediction_type"].value
        if resolution is None and "base.resolution" in found:
            resolution = found["base.resolution"].value[0]
    return Declaration(sources=sources, prediction_type=prediction, resolution=resolution)
