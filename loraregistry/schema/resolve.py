"""Import a header's metadata into one AdapterMetadata, and project a record back onto header keys.

Import precedence, highest first: the ``lorareg`` record > ``modelspec.*`` > kohya ``ss_*`` > diffusers
``lora_adapter_metadata`` > the weights. A lower source fills only the fields a higher one left empty,
and every disagreement becomes a warning naming both keys and values. Two exceptions, because the
weights cannot be wrong about themselves: ``network.*`` and ``tensor_sha256`` take the weights' value
(conflict reported); a declared ``base.architecture`` is kept (conflict reported; verify judges it).

Foreign keys that merely echo what ``project_metadata`` writes for the ``lorareg`` record carry no news
and are skipped, so project -> import returns the record unchanged.

Nothing inferred is written into foreign keys: fields the record lists in ``inferred`` (read from the weights,
not declared) stay in the ``lorareg`` record; ``modelspec.*`` and ``ss_*`` are projected from the declared
fields only, and a foreign key only an inferred fact would write is left as the file has it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..architectures.ids import ARCHITECTURES, resolve
from ..canonical import NETWORK_TYPES, WeightFacts
from ..errors import MetadataError
from ..record import Record
from . import kohya, modelspec
from ._foreign import Findings, Found, short
from .diffusers_meta import KEY as DIFFUSERS_KEY
from .diffusers_meta import read_diffusers
from .keys import HEADER_KEY
from .light import certainly_valid

if TYPE_CHECKING:  # the pydantic models load only where a record is built (see ``import_light``)
    from pydantic import ValidationError

    from .metadata import AdapterMetadata

_SUB_RECORDS = ("base", "network", "training", "provenance")
_READERS: dict[str, Callable[[Mapping[str, str]], Findings]] = {
    "modelspec": modelspec.read_modelspec,
    "kohya": kohya.read_kohya,
    "diffusers": read_diffusers,
}  # in precedence order
_DROP_ORDER = ("diffusers", "kohya", "modelspec", "weights")  # who yields first when values cannot coexist
_WEIGHTS = "weights"
_UNORDERED = {"network.components", "network.target_modules"}


class ImportedMetadata(Record):
    """The record a header's metadata amounts to, and how it was assembled."""

    metadata: AdapterMetadata
    sources: dict[str, dict[str, str]]  # 'lorareg' / 'modelspec' / 'kohya' / 'diffusers' / 'other' -> raw keys
    inferred: list[str]  # fields whose value came from the weights
    warnings: list[str]
    origins: dict[str, str]  # field path -> header key it came from, or 'weights'

    def __init__(self, metadata: AdapterMetadata, sources: dict[str, dict[str, str]], inferred: list[str] | None = None,
                 warnings: list[str] | None = None, origins: dict[str, str] | None = None) -> None:
        self.metadata = metadata
        self.sources = sources
        self.inferred = [] if inferred is None else inferred
        self.warnings = [] if warnings is None else warnings
        self.origins = {} if origins is None else origins


def split_sources(header: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Group header keys by the convention they belong to (only non-empty groups)."""
    groups: dict[str, dict[str, str]] = {}
    for key, value in header.items():
        if key == HEADER_KEY:
            group = "lorareg"
        elif modelspec.is_modelspec_key(key):
            group = "modelspec"
        elif kohya.is_kohya_key(key):
            group = "kohya"
        elif key == DIFFUSERS_KEY:
            group = "diffusers"
        else:
            group = "other"
        groups.setdefault(group, {})[key] = value
    return groups


def import_metadata(header_metadata: Mapping[str, str], *, facts: WeightFacts | None = None) -> ImportedMetadata:
    """Read every metadata convention in a header (and the weights' facts) into one AdapterMetadata.

    Foreign values that do not parse become warnings; only an invalid ``lorareg`` record (our own
    schema) or a non-string value raises MetadataError.
    """
    warnings: list[str] = []
    chosen: dict[str, Found] = {}
    source_of: dict[str, str] = {}
    inferred = _merge(header_metadata, facts, chosen, source_of, warnings)
    metadata, dropped = _build(chosen, source_of, warnings)
    inferred = [path for path in dict.fromkeys([*metadata.inferred, *inferred]) if path not in dropped]
    return ImportedMetadata(
        metadata=metadata,
        sources=split_sources(header_metadata),
        inferred=inferred,
        warnings=warnings,
        origins={path: found.key for path, found in sorted(chosen.items())},
    )


class LightImport(Record):
    """What ``import_metadata`` would give for a header whose merged fields need no judging: the warnings and the
    field values (dotted path -> value, as the record would hold them), without building the record."""

    values: dict[str, Any]
    warnings: list[str]

    def __init__(self, values: dict[str, Any], warnings: list[str]) -> None:
        self.values = values
        self.warnings = warnings


def import_light(header_metadata: Mapping[str, str], *, facts: WeightFacts | None = None) -> LightImport | None:
    """``import_metadata`` without the pydantic record, for headers with no ``lorareg`` record whose merged fields
    ``light.certainly_valid`` vouches for (then the record would take every value as it is and add no warning);
    None otherwise: call ``import_metadata``. Header-level verify asks this first."""
    if HEADER_KEY in header_metadata:
        return None
    warnings: list[str] = []
    chosen: dict[str, Found] = {}
    _merge(header_metadata, facts, chosen, {}, warnings)
    values = {path: found.value for path, found in chosen.items()}
    return LightImport(values, warnings) if certainly_valid(values) else None


def _merge(header_metadata: Mapping[str, str], facts: WeightFacts | None, chosen: dict[str, Found],
           source_of: dict[str, str], warnings: list[str]) -> list[str]:
    """Fill ``chosen`` / ``source_of`` from every source in precedence order and return the inferred paths."""
    for key, value in header_metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise MetadataError(f"header metadata must map str to str; {short(key)} -> {type(value).__name__}")
    record = None
    if HEADER_KEY in header_metadata:
        from .metadata import read_header_value

        record, record_warnings = read_header_value(header_metadata[HEADER_KEY])
        warnings += record_warnings
        for path, value in flatten(record).items():
            chosen[path], source_of[path] = Found(value, HEADER_KEY), "lorareg"

    echo = {name: read(project_metadata(record)) for name, read in _READERS.items()} if record is not None else {}
    for name, read in _READERS.items():
        findings = read(header_metadata)
        warnings += findings.warnings
        for path, found in findings.values.items():
            if name in echo and path in echo[name].values and _same(path, echo[name].values[path].value, found.value):
                continue  # written by lorareg from the record: no news
            if path not in chosen:
                chosen[path], source_of[path] = found, name
            elif not _same(path, chosen[path].value, found.value):
                warnings.append(_conflict(path, chosen[path], found, keeping=chosen[path].key))

    return _apply_facts(facts, chosen, source_of, warnings) if facts is not None else []


# A LoraConfig names target modules and pattern keys as peft matches them (leaf names, regexes, paths without
# CLIP's text_model.); the weights name the same modules canonically. A different spelling is no conflict.
_PEFT_SPELLED = frozenset({"network.target_modules"})
_PATTERNS = frozenset({"network.rank_pattern", "network.alpha_pattern"})


def _canonical_pattern_key(key: str) -> str:
    """``text_encoder:encoder.layers.0...`` (transformers 5 spelling) -> ``text_encoder:text_model.encoder...``;
    ``transformer:^proj_out`` (anchored so that peft does not apply it to ``single_transformer_blocks.N.proj_out``,
    as ``writer`` spells it) -> ``transformer:proj_out``."""
    component, sep, name = key.partition(":")
    if name.startswith("^") and name[1:].replace(".", "").replace("_", "").isalnum():
        name = name[1:]
        key = f"{component}{sep}{name}"
    if sep and component.startswith("text_encoder") and name.startswith(("encoder.layers.", "embeddings.")):
        return f"{component}:text_model.{name}"
    return key


def _respelled(path: str, declared: Found) -> bool:
    return path in _PEFT_SPELLED and declared.key == "lora_adapter_metadata"


def _conflict(path: str, kept: Found, other: Found, *, keeping: str) -> str:
    return f"{path}: {kept.key} = {short(kept.value)} but {other.key} = {short(other.value)}; keeping {keeping}"


def _same(path: str, a: Any, b: Any) -> bool:
    if path in _UNORDERED and isinstance(a, list) and isinstance(b, list):
        return sorted(map(str, a)) == sorted(map(str, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        if path in _PATTERNS:
            a = {_canonical_pattern_key(k): v for k, v in a.items()}
            b = {_canonical_pattern_key(k): v for k, v in b.items()}
        return a.keys() == b.keys() and all(_same(path, a[k], b[k]) for k in a)
    return a == b


def _weight_facts(facts: WeightFacts, warnings: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if facts.network_type in NETWORK_TYPES:
        values["network.type"] = facts.network_type
    elif facts.network_type:
        warnings.append(f"weights: network type {facts.network_type!r} is not one lorareg records; network.type "
                        "not inferred")
    values["network.rank"] = facts.rank
    values["network.alpha"] = facts.alpha
    values["network.conv_rank"] = facts.conv_rank
    values["network.conv_alpha"] = facts.conv_alpha
    if facts.rank is not None:  # with a rank, empty patterns are a fact too: every module uses it
        values["network.rank_pattern"] = dict(facts.rank_pattern)
        values["network.alpha_pattern"] = dict(facts.alpha_pattern)
    values["network.components"] = list(facts.components) or None
    values["network.target_modules"] = list(facts.target_modules) or None
    values["tensor_sha256"] = facts.tensor_sha256
    return values


def _to_lorareg_pattern(path: str, facts: WeightFacts, chosen: dict[str, Found], source_of: dict[str, str]) -> None:
    """A peft ``rank_pattern`` / ``alpha_pattern`` lists every module whose value differs from the one ``r`` /
    ``lora_alpha``, convolutions included; lorareg's list modules that differ from ``rank`` (Linear) or
    ``conv_rank`` (convolutions). Entries that only restate the conv value the weights hold are dropped."""
    found = chosen[path]
    if source_of.get(path) != "diffusers" or not isinstance(found.value, dict):
        return
    conv_value = facts.conv_rank if path == "network.rank_pattern" else facts.conv_alpha
    conv = set(facts.conv_modules)
    kept = {key: value for key, value in found.value.items()
            if not (conv_value is not None and _canonical_pattern_key(key) in conv and _same(path, value, conv_value))}
    if kept:
        chosen[path] = Found(kept, found.key)
    else:
        del chosen[path], source_of[path]


def _apply_facts(facts: WeightFacts, chosen: dict[str, Found], source_of: dict[str, str],
                 warnings: list[str]) -> list[str]:
    inferred: list[str] = []
    for path in _PATTERNS & chosen.keys():
        _to_lorareg_pattern(path, facts, chosen, source_of)
    for path, value in _weight_facts(facts, warnings).items():
        if value is None:
            continue
        current = chosen.get(path)
        if (current is None and value == {}) or (current is not None and _same(path, current.value, value)):
            continue  # the default, or what was declared
        if current is not None and not _respelled(path, current):
            warnings.append(_conflict(path, current, Found(value, _WEIGHTS), keeping=_WEIGHTS))
        if value == {}:
            chosen.pop(path, None)
            source_of.pop(path, None)
        else:
            chosen[path], source_of[path] = Found(value, _WEIGHTS), _WEIGHTS
        inferred.append(path)
    # No alpha stored and none declared: every loader (kohya, peft, diffusers) then uses alpha = rank.
    for rank_path, alpha_path, rank, alpha in (("network.rank", "network.alpha", facts.rank, facts.alpha),
                                               ("network.conv_rank", "network.conv_alpha", facts.conv_rank,
                                                facts.conv_alpha)):
        if rank is not None and alpha is None and alpha_path not in chosen:
            chosen[alpha_path], source_of[alpha_path] = Found(float(rank), _WEIGHTS), _WEIGHTS
            inferred.append(alpha_path)

    arch = resolve(facts.architecture) if facts.architecture else None
    declared = chosen.get("base.architecture")
    if arch is not None and declared is None:
        chosen["base.architecture"], source_of["base.architecture"] = Found(arch.id, _WEIGHTS), _WEIGHTS
        inferred.append("base.architecture")
    elif arch is not None and declared.value != arch.id:
        warnings.append(f"base.architecture: {declared.key} = {declared.value!r} but the weights look like "
                        f"{arch.id!r}; keeping {declared.key} (run `lorareg verify` to check)")
    return inferred


def _build(chosen: dict[str, Found], source_of: dict[str, str],
           warnings: list[str]) -> tuple[AdapterMetadata, set[str]]:
    """Validate the merged fields; a foreign value the schema refuses is dropped with a warning, and retried.
    Returns the record and the dropped paths."""
    from pydantic import ValidationError

    from .metadata import AdapterMetadata, describe_validation_error

    dropped: set[str] = set()
    while True:
        try:
            record = AdapterMetadata.model_validate(unflatten({path: found.value for path, found in chosen.items()}))
            return record, dropped
        except ValidationError as exc:
            culprit = _culprit(exc, chosen, source_of)
            if culprit is None:
                raise MetadataError(describe_validation_error(exc)) from None
            found = chosen.pop(culprit)
            source_of.pop(culprit)
            dropped.add(culprit)
            warnings.append(f"{culprit}: {found.key} = {short(found.value)} ignored ({describe_validation_error(exc)})")


def _culprit(exc: ValidationError, chosen: dict[str, Found], source_of: dict[str, str]) -> str | None:
    """The foreign field to drop for the first error lorareg can blame on one; the least trusted source yields."""
    for error in exc.errors(include_url=False):
        if error["type"] == "cross_field":
            paths = error["ctx"]["fields"].split(",")
        else:
            location = ".".join(str(part) for part in error["loc"])
            paths = [p for p in chosen if location == p or location.startswith(p + ".")]
        candidates = [p for p in paths if source_of.get(p, "lorareg") != "lorareg"]
        if candidates:
            return min(candidates, key=lambda p: _DROP_ORDER.index(source_of[p]))
    return None


def flatten(meta: AdapterMetadata) -> dict[str, Any]:
    """Set (non-default) fields as {dotted path: value}; sub-records are opened one level, values kept whole."""
    data = meta.model_dump(exclude_defaults=True)
    data.pop("schema_version", None)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SUB_RECORDS:
            flat.update({f"{key}.{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for path, value in flat.items():
        head, _, rest = path.partition(".")
        if rest:
            data.setdefault(head, {})[rest] = value
        else:
            data[head] = value
    return data


# --- projection -----------------------------------------------------------------------------------


def declared_view(meta: AdapterMetadata) -> AdapterMetadata:
    """``meta`` without the fields it lists as inferred (each back at its default): what was declared."""
    if not meta.inferred:
        return meta
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path in meta.inferred:
        head, _, name = path.partition(".")
        if name:
            nested.setdefault(head, {})[name] = _default(getattr(meta, head), name)
        else:
            top[head] = _default(meta, head)
    for head, fields in nested.items():
        top[head] = getattr(meta, head).model_copy(update=fields)
    return meta.model_copy(update=top)


def _default(model: Any, name: str) -> Any:
    return type(model).model_fields[name].get_default(call_default_factory=True)


def _foreign_projection(meta: AdapterMetadata) -> dict[str, str]:
    return {**modelspec.modelspec_projection(meta), **kohya.kohya_projection(meta)}


def project_metadata(meta: AdapterMetadata) -> dict[str, str]:
    """Header metadata for a record: ``lorareg`` + ModelSpec (MUST keys always, when the architecture is
    declared) + the minimal kohya ``ss_*`` set, so A1111, ComfyUI and Civitai tools read it. Foreign keys
    come from the declared fields only (``declared_view``). Sorted keys."""
    from .metadata import to_header_value

    projected = {HEADER_KEY: to_header_value(meta), **_foreign_projection(declared_view(meta))}
    return dict(sorted(projected.items()))


def owned_keys(meta: AdapterMetadata) -> frozenset[str]:
    """Header keys ``project_metadata`` is responsible for: replaced (or removed) on every write.

    Without a declared architecture we write no ModelSpec block and no ss_v2 / ss_base_model_version, so
    those keys, if a file has them, belong to whoever wrote them and are kept. So are the keys that only an
    inferred field would write: we have no declared value to put there.
    """
    declared = declared_view(meta)
    owned = {HEADER_KEY, *kohya.OWNED_KEYS}
    if declared.base.architecture in ARCHITECTURES:
        owned |= modelspec.OWNED_KEYS
    else:
        owned -= kohya.ARCHITECTURE_KEYS
    if declared is not meta:
        owned -= _foreign_projection(meta).keys() - _foreign_projection(declared).keys()
    return frozenset(owned)


def merge_projection(existing: Mapping[str, str], meta: AdapterMetadata) -> dict[str, str]:
    """``existing`` header metadata with the keys we own replaced by the projection of ``meta``; every
    other key (``ss_tag_frequency``, ``modelspec.thumbnail``, a tool's own keys, ...) is kept as is.

    A kept foreign key that declares a value for an inferred field stays if it says what the weights say, and
    goes if they contradict it (a stale ``sshs_model_hash``, an ``ss_network_dim`` the factors do not have): we
    write no inferred value, and keep no false one."""
    owned = owned_keys(meta)
    kept = {key: value for key, value in existing.items() if key not in owned}
    projected = project_metadata(meta)
    for key in [key for key in kept if _contradicted(key, kept[key], meta)]:
        del kept[key]
    for group in _key_groups(projected.keys() & existing.keys() - {HEADER_KEY}):
        old = {key: existing[key] for key in group if key in existing}
        new = {key: projected[key] for key in group if key in projected}
        if old != new and _meaning(old) == _meaning(new):
            projected.update(old)  # same facts in the writer's own spelling ('1.0', a LyCORIS preset): keep its bytes
    return dict(sorted({**kept, **projected}.items()))


def _contradicted(key: str, value: str, meta: AdapterMetadata) -> bool:
    """Whether a foreign key declares a value for an inferred field that differs from what the weights hold."""
    if not meta.inferred:
        return False
    inferred = set(meta.inferred)
    for read in (modelspec.read_modelspec, kohya.read_kohya):
        for path, found in read({key: value}).values.items():
            head, _, name = path.partition(".")
            record_value = getattr(getattr(meta, head), name) if name else getattr(meta, head)
            if path == "network.type" and {found.value, record_value} <= _ONE_KOHYA_MODULE:
                continue  # networks.lora trains both; only its conv args tell them apart
            if path in inferred and not _same(path, found.value, record_value):
                return True
    return False


_ONE_KOHYA_MODULE = frozenset({"lora", "locon"})


# Keys read together: the network module and its args, kohya's two ways of naming the base.
_READ_TOGETHER = (("ss_network_module", "ss_network_args"), ("ss_v2", "ss_base_model_version"))


def _key_groups(keys: set[str]) -> list[tuple[str, ...]]:
    together = [group for group in _READ_TOGETHER if set(group) & keys]
    grouped = {key for group in together for key in group}
    return together + [(key,) for key in sorted(keys - grouped)]


def _meaning(header: Mapping[str, str]) -> list[tuple[str, Any]]:
    """What the foreign readers make of some header keys, without the key names (warnings count too)."""
    meaning: list[tuple[str, Any]] = []
    for read in (modelspec.read_modelspec, kohya.read_kohya):
        findings = read(header)
        meaning += sorted((path, found.value) for path, found in findings.values.items())
        meaning += [("warning", len(findings.warnings))]
    return meaning
