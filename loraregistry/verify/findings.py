"""Findings and the one table of their codes.

Every defect verify can report has one stable code ``LRG###`` here, grouped by family in blocks of a
hundred. Codes are never renumbered or reused: a retired code stays in the table, marked retired in its
description. Checks refer to a code by its short name (``"module-not-in-base"``) so the code reads at the
call site; ``docs/verify-codes.md`` is generated from this table by ``codes_markdown()``.
"""

from __future__ import annotations

from typing import Any, Literal

from ..record import FrozenRecord
from .consumers.codes import CONSUMER_ROWS
from .consumers.codes import FAMILY as _CONSUMER_FAMILY
from .consumers.codes import FAMILY_BLURB as _CONSUMER_BLURB

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")

FAMILIES: dict[str, str] = {
    "integrity": "The bytes are not a valid safetensors container (LRG0xx).",
    "format": "Which key format the tensors use, and keys that fit none (LRG1xx).",
    "architecture": "The base architecture the weights fit, against the declared and requested one (LRG2xx).",
    "compatibility": "Each module against the base: exists, shapes, ranks, alpha, kernels, factors (LRG3xx).",
    "health": "What the tensor values say: NaN/Inf, untrained or exploding factors (LRG4xx).",
    "metadata": "The header metadata: schema, declared facts against the weights, hashes, size (LRG5xx).",
}
FAMILIES[_CONSUMER_FAMILY] = _CONSUMER_BLURB  # LRG6xx: what each loader does with the file
_FAMILY_OF_HUNDRED = dict(enumerate(FAMILIES))


class CodeInfo(FrozenRecord):
    """One row of the table: what a code means, and how severe it is."""

    code: str
    name: str
    severity: Severity
    title: str
    description: str

    def __init__(self, code: str, name: str, severity: Severity, title: str, description: str) -> None:
        self._set(code=code, name=name, severity=severity, title=title, description=description)

    @property
    def family(self) -> str:
        return _FAMILY_OF_HUNDRED[int(self.code[3:]) // 100]


_TABLE: tuple[tuple[str, str, Severity, str, str], ...] = (
    # --- integrity ---------------------------------------------------------------------------------------
    ("LRG001", "empty-file", "error", "Empty file",
     "The file has 0 bytes; the download or copy did not finish."),
    ("LRG002", "truncated-file", "error", "Truncated file",
     "The file ends before the 8-byte header length or before the tensor data its header declares."),
    ("LRG003", "header-length-past-eof", "error", "Header length past end of file",
     "The 8-byte header length points past the end of the file."),
    ("LRG004", "header-over-cap", "error", "Header over the size cap",
     "The declared header length exceeds the 100 MB cap every safetensors reader enforces."),
    ("LRG005", "header-not-json", "error", "Header is not a JSON object",
     "The header is not UTF-8, not valid JSON, not an object, or too short to be one."),
    ("LRG006", "metadata-not-strings", "error", "Metadata values are not strings",
     "`__metadata__` must be an object of string values; loaders refuse anything else."),
    ("LRG007", "unknown-dtype", "error", "Unknown tensor dtype",
     "A tensor entry names a dtype the safetensors format does not define."),
    ("LRG008", "malformed-tensor-entry", "error", "Malformed tensor entry",
     "A tensor entry lacks dtype/shape/data_offsets, or has a negative dimension or reversed offsets."),
    ("LRG009", "shape-span-mismatch", "error", "Shape and byte span disagree",
     "A tensor's shape times its dtype size differs from the byte span of its data_offsets."),
    ("LRG010", "overlapping-offsets", "error", "Overlapping tensor data",
     "Two tensors' data_offsets overlap."),
    ("LRG011", "gap-in-data", "error", "Gap between tensors",
     "The data section has bytes between two tensors that no tensor accounts for."),
    ("LRG012", "trailing-bytes", "error", "Trailing bytes",
     "The file is longer than its header describes; it was appended to or is corrupt."),
    ("LRG013", "duplicate-key", "error", "Duplicate header key",
     "A key appears more than once in the header JSON; readers disagree on which one wins."),
    ("LRG014", "pickle-checkpoint", "error", "Pickle checkpoint, not safetensors",
     "The file is a PyTorch pickle/zip checkpoint; lorareg never unpickles files."),
    ("LRG015", "invalid-container", "error", "Invalid safetensors container",
     "Any other container defect the reader refuses."),
    ("LRG016", "lone-surrogate", "error", "Lone surrogate in the header",
     "A header string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff); the safetensors library refuses it."),
    ("LRG017", "number-out-of-range", "error", "Number out of range",
     "A header number loaders cannot represent: over 4,300 digits, beyond a double, a size over 2^63-1, a shape "
     "whose byte size overflows, or more than 64 dimensions."),
    ("LRG018", "too-many-tensors", "error", "Too many tensors",
     "The header lists more than 100,000 tensor entries (a FLUX LoRA has under 2,000); refused before parsing."),
    ("LRG019", "git-lfs-pointer", "error", "Git LFS pointer, not the file",
     "The file is a Git LFS pointer: the repository was cloned without `git lfs pull`."),
    ("LRG020", "html-page", "error", "HTML page, not safetensors",
     "The file is an HTML or XML page, typically a login or error page a download saved in place of the file."),
    ("LRG021", "json-document", "error", "JSON document, not safetensors",
     "The file is a JSON document, typically an API error body a download saved in place of the file."),
    ("LRG022", "compressed-file", "error", "Compressed file",
     "The file is a gzip or zip archive (not a PyTorch checkpoint); unpack it and use what is inside."),
    ("LRG023", "text-file", "error", "Text file, not safetensors",
     "The file is plain text, typically an error message a download saved in place of the file."),
    ("LRG024", "too-many-values", "error", "Too many JSON values",
     "The header holds over 2,000,000 JSON values outside strings (an adapter at the tensor cap needs under "
     "1,000,000); refused before parsing, which would take gigabytes."),
    # --- format ------------------------------------------------------------------------------------------
    ("LRG100", "no-tensors", "error", "No tensors",
     "The file holds no tensors at all, so it changes nothing."),
    ("LRG101", "unknown-format", "error", "Unknown key format",
     "No known key format (kohya, peft, diffusers, attn-procs, LyCORIS) matches the tensor keys."),
    ("LRG102", "unknown-keys", "error", "Keys that fit no format",
     "Some keys map to no module; diffusers refuses such files, ComfyUI and A1111 skip the keys."),
    ("LRG103", "bundled-embeddings", "warning", "Bundled textual-inversion embeddings",
     "`bundle_emb.*` tensors: A1111 loads them with the LoRA, diffusers and ComfyUI do not."),
    ("LRG104", "mixed-formats", "error", "Mixed key formats",
     "Keys of more than one format in one file (e.g. kohya and peft); loaders pick one and drop the rest."),
    ("LRG105", "non-float-factor", "error", "Factor with a non-float dtype",
     "A weight factor is stored as an integer or bool dtype; loaders expect floating point."),
    ("LRG106", "unchecked-algorithm", "warning", "Algorithm verify cannot check",
     "Modules of an algorithm (OFT, IA3, GLoRA, ...) whose shapes verify does not check."),
    ("LRG107", "no-component-prefix", "warning", "Keys without a component prefix",
     "peft/attn-procs keys without `unet.`/`text_encoder.`: diffusers' load_lora_weights loads nothing, silently."),
    ("LRG108", "algorithm-not-in-diffusers", "warning", "Algorithm diffusers cannot load",
     "LoHa, LoKr and full-diff modules: ComfyUI and A1111 load them, diffusers refuses the file."),
    # --- architecture ------------------------------------------------------------------------------------
    ("LRG200", "architecture-undetected", "error", "Architecture not detected",
     "The modules fit no known base architecture."),
    ("LRG201", "architecture-partial-fit", "warning", "Partial fit",
     "The best-fitting architecture holds only some of the modules; the rest fit no known base."),
    ("LRG202", "declared-architecture-mismatch", "error", "Declared architecture contradicts the weights",
     "The metadata declares one base but the weights fit another; A1111 files and filters by the declaration."),
    ("LRG203", "requested-architecture-mismatch", "error", "Adapter does not fit the requested base",
     "`--base` names a base the adapter does not fit; loaders would apply part of it, or nothing."),
    ("LRG204", "ambiguous-variant", "info", "Variant told apart by metadata only",
     "Bases with identical shapes (sd2-512 / sd2-768-v, flux1-dev / -schnell) differ only in declared facts."),
    ("LRG205", "requested-variant-differs", "warning", "Requested variant differs from the declared one",
     "The shapes fit, but the adapter declares another variant (prediction type / resolution) of the base."),
    # --- compatibility -----------------------------------------------------------------------------------
    ("LRG300", "module-not-in-base", "error", "Module not in the base",
     "The adapter patches a module path the base model does not have."),
    ("LRG301", "shape-mismatch", "error", "Shape mismatch",
     "The module's in/out features differ from the base module's."),
    ("LRG302", "rank-mismatch", "error", "down/up ranks disagree",
     "The down factor's rank differs from the up factor's; the product cannot be formed."),
    ("LRG303", "alpha-not-scalar", "error", "Alpha is not a scalar",
     "The alpha tensor holds more than one value (or none), or is not a float."),
    ("LRG304", "alpha-not-finite", "error", "Alpha is NaN or infinite",
     "The alpha scalar is NaN or infinite, so the module's scale is undefined."),
    ("LRG305", "alpha-non-positive", "warning", "Alpha is zero or negative",
     "alpha <= 0: kohya reads 0 as alpha = rank while diffusers scales by 0; negative flips the delta."),
    ("LRG306", "conv-kernel-mismatch", "error", "Conv kernel mismatch",
     "The factors' kernel size differs from the base convolution's, or a conv module gets no kernel."),
    ("LRG307", "factors-do-not-compose", "error", "LyCORIS factors do not compose",
     "The LoHa/LoKr/LoCon/full factors do not multiply out to the base module's weight shape."),
    ("LRG308", "conv-shaped-linear", "warning", "Conv-shaped factors for a Linear module",
     "1x1-conv factors on a Linear module (kohya SD2 proj_in/out): A1111 and ComfyUI load them, diffusers refuses."),
    ("LRG309", "missing-factor", "error", "Missing up or down factor",
     "A LoRA module has only one of its two factors; loaders skip it or fail."),
    ("LRG310", "linear-shaped-conv", "warning", "Linear-shaped factors for a 1x1 conv module",
     "2-D factors on a 1x1 Conv2d (SD1 proj_in/out): ComfyUI reshapes them, peft/diffusers refuse."),
    ("LRG311", "malformed-factor", "error", "Factor with an impossible shape",
     "A factor has a number of dimensions no algorithm uses (LoRA factors are 2-D or 4-D)."),
    ("LRG312", "dora-scale-shape", "error", "DoRA magnitude has the wrong size",
     "dora_scale must hold one value per output feature of the module."),
    ("LRG313", "component-not-in-base", "error", "Component not in the base",
     "The adapter patches a model component (e.g. text_encoder_2) the base does not have."),
    # --- health ------------------------------------------------------------------------------------------
    ("LRG400", "non-finite-values", "error", "NaN or Inf values",
     "A tensor holds NaN or infinite values; the patched model would output NaN."),
    ("LRG401", "untrained-module", "warning", "Untrained module (all-zero up)",
     "The up factor is all zeros (how LoRA is initialised), so the module changes nothing."),
    ("LRG402", "untrained-adapter", "error", "Untrained adapter",
     "Every module's delta is zero: the adapter does nothing (saved before training, or a broken export)."),
    ("LRG403", "extreme-norm", "warning", "Extreme delta norm",
     "The module's effective delta has an RMS entry of >= 1.0, many times any base weight's; images will fry."),
    ("LRG404", "all-zero-tensor", "warning", "All-zero tensor",
     "A factor other than up (down, LyCORIS factor, dora_scale) is all zeros."),
    ("LRG405", "unscannable-dtype", "info", "Tensor not scanned",
     "The tensor's dtype cannot be read with numpy (e.g. F4/F6), so its values were not checked."),
    # --- metadata ----------------------------------------------------------------------------------------
    ("LRG500", "record-invalid", "error", "Invalid lorareg record",
     "The `lorareg` header value does not validate against the AdapterMetadata schema."),
    ("LRG501", "declared-architectures-conflict", "warning", "Metadata sources disagree on the base",
     "Two metadata conventions (lorareg, modelspec, kohya) declare different base architectures."),
    ("LRG502", "missing-trigger-words", "info", "No trigger words",
     "No trigger words are declared; users must guess the prompt that activates the adapter."),
    ("LRG503", "missing-license", "info", "No license",
     "No license is declared; sites and users cannot tell how the adapter may be used."),
    ("LRG504", "stale-tensor-hash", "error", "Stale tensor hash in the lorareg record",
     "The record's tensor_sha256 differs from the file's tensor-data sha256 (AutoV3): the tensors changed."),
    ("LRG505", "stale-foreign-hash", "warning", "Stale tensor hash in foreign metadata",
     "modelspec.hash_sha256 or sshs_model_hash differs from the file's tensor-data sha256 (AutoV3)."),
    ("LRG506", "tag-frequency-bloat", "warning", "Huge ss_tag_frequency",
     "ss_tag_frequency is over 64 KB; every tool that reads the header pays for it."),
    ("LRG507", "header-bloat", "warning", "Huge metadata",
     "The metadata is over 1 MB; headers are read on every listing, hash and load."),
    ("LRG508", "metadata-import-warning", "warning", "Metadata value ignored or in conflict",
     "A foreign metadata value did not parse, or two conventions disagree; reported by the importer."),
    ("LRG509", "declared-network-mismatch", "warning", "Declared rank/alpha differ from the weights",
     "The lorareg record's network rank or alpha differs from what the weights hold."),
)

CODES: dict[str, CodeInfo] = {row[0]: CodeInfo(*row) for row in _TABLE + CONSUMER_ROWS}
BY_NAME: dict[str, CodeInfo] = {info.name: info for info in CODES.values()}


class Finding(FrozenRecord):
    """One defect found in one file.

    ``code`` is the stable ``LRG###``; ``name`` its short name; ``family`` and ``severity`` come from the
    table. ``message`` says what is wrong (``got '…', expected '…'``), ``key`` where (a tensor key, or a
    module as ``component:path``; None for the whole file) and ``hint`` what to do about it.
    """

    code: str
    name: str
    severity: Severity
    family: str
    message: str
    key: str | None
    hint: str | None

    def __init__(self, code: str, name: str, severity: Severity, family: str, message: str, key: str | None = None,
                 hint: str | None = None) -> None:
        self._set(code=code, name=name, severity=severity, family=family, message=message, key=key, hint=hint)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "name": self.name, "severity": self.severity, "family": self.family,
                "message": self.message, "key": self.key, "hint": self.hint}


def finding(name: str, message: str, *, key: str | None = None, hint: str | None = None) -> Finding:
    """A Finding for the code named ``name`` (a short name from the table, or the code itself)."""
    info = BY_NAME.get(name) or CODES[name]
    return Finding(code=info.code, name=info.name, severity=info.severity, family=info.family,
                   message=message, key=key, hint=hint)


def codes_markdown() -> str:
    """The code table as Markdown: what ``docs/verify-codes.md`` holds (a test keeps it in sync)."""
    lines = [
        "# `lorareg verify` finding codes",
        "",
        "<!-- Generated from loraregistry/verify/findings.py by codes_markdown(); do not edit by hand. -->",
        "",
        "Every finding carries a stable code. Codes are never renumbered or reused. Severity is the default:",
        "`error` fails verify (exit 1), `warning` fails it only under `--strict`, `info` never does.",
        "",
    ]
    for index, (family, blurb) in enumerate(FAMILIES.items()):
        lines += [f"## {family}", "", blurb, "", "| code | name | severity | title | meaning |",
                  "|---|---|---|---|---|"]
        for info in CODES.values():
            if int(info.code[3:]) // 100 == index:
                lines.append(f"| {info.code} | `{info.name}` | {info.severity} | {info.title} | {info.description} |")
        lines.append("")
    return "\n".join(lines)
