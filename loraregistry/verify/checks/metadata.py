"""Metadata checks: the lorareg record's schema, what the conventions declare, recommended fields, size."""

from __future__ import annotations

import shlex

from ...errors import MetadataError
from ...record import FrozenRecord
from ...schema.keys import HEADER_KEY
from ..context import Context
from ..findings import Finding, finding

TAG_FREQUENCY_KEY = "ss_tag_frequency"
TAG_FREQUENCY_LIMIT = 64 * 1024  # kohya writes one count per caption tag; sane datasets stay far below this
METADATA_LIMIT = 1024 * 1024  # every listing, hash and load parses the header; a megabyte is already slow on a Hub

_NETWORK_FIELDS = ("network.rank:", "network.alpha:", "network.conv_rank:", "network.conv_alpha:")
# Judged elsewhere: base.architecture by the architecture checks. Not comparable: peft target_modules are patterns,
# the weights' are leaf module names.
_JUDGED_ELSEWHERE = ("base.architecture:", "network.target_modules:", "network.components:")


# A header-only adapter (remote file) has unread alpha values: the weights say nothing about alpha then.
_ALPHA_FIELDS = ("network.alpha:", "network.conv_alpha:", "network.alpha_pattern:")


def _import_warning_code(warning: str, alphas_unknown: bool = False) -> str | None:
    """The code an importer warning becomes, or None when another check already reports its cause."""
    if warning.startswith(_JUDGED_ELSEWHERE):
        return None
    if alphas_unknown and warning.startswith(_ALPHA_FIELDS) and " weights = " in warning:
        return None
    if warning.startswith("network.") and ": weights = " in warning:
        return None  # a value of the weights the schema refuses (alpha 0, NaN): the compatibility checks report it
    if warning.startswith(_NETWORK_FIELDS) and " but weights = " in warning:
        return "declared-network-mismatch"
    return "metadata-import-warning"


def check_record(ctx: Context) -> list[Finding]:
    raw = ctx.adapter.header.metadata.get(HEADER_KEY)
    if raw is None:
        return []
    from ...schema.metadata import read_header_value  # pydantic: only files with a record load it

    try:
        read_header_value(raw)
    except MetadataError as exc:
        return [finding("record-invalid", exc.message, key=HEADER_KEY,
                        hint="drop it with `lorareg meta unset FILE lorareg`, then rebuild it with "
                             "`lorareg meta import FILE`")]
    return []


def check_declared_sources(ctx: Context) -> list[Finding]:
    sources = ctx.declaration.sources
    if len(set(sources.values())) < 2:
        return []
    spelled = ", ".join(f"{key} = {arch}" for key, arch in sources.items())
    return [finding("declared-architectures-conflict", f"got {spelled}, expected one base architecture",
                    key=next(iter(sources)),
                    hint="declare the one base with `lorareg meta set FILE --base <id>`")]


def _imported(ctx: Context):
    """The merged record's warnings and fields; an invalid lorareg record (reported by check_record) is left out,
    not fatal. A header whose fields need no judging is read without building the pydantic record (same result,
    see ``schema.light``)."""
    from ...schema.resolve import import_light, import_metadata

    header = ctx.adapter.header.metadata
    try:
        light = import_light(header, facts=ctx.adapter.facts)
    except MetadataError:
        light = None  # import_metadata below says the same and is handled there
    if light is not None:
        return _Imported(light.warnings, light.values.get("trigger_words") or [], light.values.get("license"))
    try:
        imported = import_metadata(header, facts=ctx.adapter.facts)
    except MetadataError:
        try:
            imported = import_metadata({k: v for k, v in header.items() if k != HEADER_KEY},
                                       facts=ctx.adapter.facts)
        except MetadataError:
            return None
    return _Imported(imported.warnings, imported.metadata.trigger_words, imported.metadata.license)


class _Imported(FrozenRecord):
    """What check_imported reads of the merged record."""

    warnings: list[str]
    trigger_words: list[str]
    license: str | None

    def __init__(self, warnings: list[str], trigger_words: list[str], license: str | None) -> None:
        self._set(warnings=warnings, trigger_words=trigger_words, license=license)


def check_imported(ctx: Context) -> list[Finding]:
    imported = _imported(ctx)
    if imported is None:
        return []
    findings: list[Finding] = []
    hints = {"declared-network-mismatch": "the weights are right; rewrite the metadata from them with "
                                          "`lorareg meta import FILE`",
             "metadata-import-warning": "fix or remove the metadata key"}
    for warning in imported.warnings:
        name = _import_warning_code(warning, ctx.adapter.alphas_unknown)
        if name is not None:
            findings.append(finding(name, warning, hint=hints[name]))
    if not imported.trigger_words:
        findings.append(finding("missing-trigger-words", "got no trigger words, expected the words that activate "
                                "the adapter", hint="declare them with `lorareg meta set FILE --trigger-words <words>` "
                                "(comma-separated), or none if it needs none"))
    if not imported.license:
        findings.append(finding("missing-license", "got no license, expected a license id such as 'openrail++'",
                                hint="declare it with `lorareg meta set FILE --license <id>`"))
    return findings


def _size(text: str) -> int:
    """UTF-8 bytes; a JSON '\\ud800' escape decodes to a lone surrogate, which strict UTF-8 cannot encode."""
    return len(text.encode("utf-8", "surrogatepass"))


def check_size(ctx: Context) -> list[Finding]:
    metadata = ctx.adapter.header.metadata
    findings: list[Finding] = []
    tags = metadata.get(TAG_FREQUENCY_KEY)
    if tags is not None and _size(tags) > TAG_FREQUENCY_LIMIT:
        findings.append(finding("tag-frequency-bloat", f"got {TAG_FREQUENCY_KEY} of {_size(tags):,} "
                                f"bytes, expected at most {TAG_FREQUENCY_LIMIT:,}", key=TAG_FREQUENCY_KEY,
                                hint=f"drop it with `lorareg meta unset FILE {TAG_FREQUENCY_KEY}`"))
    total = sum(_size(k) + _size(v) for k, v in metadata.items())
    if total > METADATA_LIMIT:
        largest = max(metadata, key=lambda k: len(metadata[k]))
        hint = (f"drop it with `lorareg meta unset FILE {shlex.quote(largest)}`" if largest != HEADER_KEY else
                "the lorareg record is the largest: drop its biggest field with `lorareg meta unset FILE <field>`")
        findings.append(finding("header-bloat", f"got {total:,} bytes of metadata, expected at most "
                                f"{METADATA_LIMIT:,}; the largest key is {largest!r}", key=largest, hint=hint))
    return findings
