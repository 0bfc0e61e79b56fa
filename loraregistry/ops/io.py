"""Reading adapters into canonical tensors, and writing op outputs safely.

``load_canonical(adapter)`` gives every tensor under its ``CanonicalKey`` and a uniform per-module
``alpha``: the stored kohya alpha tensor where there is one (bytes untouched), the peft ``lora_alpha`` /
``alpha_pattern`` of ``lora_adapter_metadata`` for peft/diffusers files, else alpha = rank (what every
loader assumes). Downstream maths then only ever computes ``scale = alpha / rank`` (``delta.module_scale``).

``write_op_output(path, tensors, ...)`` fills the record's network facts and tensor hash from the tensors in
memory, writes the file once next to ``path`` under a temporary name (``outfile``), runs ``verify`` on it, and
renames it into place only when verify finds no error (or ``force``). An output path that names an input is
refused before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..adapter import AdapterFile
from ..alphas import PEFT_CONFIG_KEY, module_alphas, peft_configs  # noqa: F401 (re-exported)
from ..canonical import CanonicalKey, ModuleKey
from ..errors import FileAccessError
from .common import by_module
from .errors import OutputFailsVerify, OutputIsInput, about
from .validate import EXPONENT_MASKS, check_alpha, check_modules

_ANY_SHA256 = "0" * 64  # stands for the output's AutoV3 while the header's size is measured

# Header keys that describe the old tensors or the old format: never carried into an op's output.
STALE_HEADER_KEYS = frozenset({PEFT_CONFIG_KEY, "lorareg", "sshs_model_hash", "sshs_legacy_hash",
                               "modelspec.hash_sha256"})


# --- reading ------------------------------------------------------------------------------------------


def load_canonical(adapter: AdapterFile, *, with_alpha: bool = True,
                   copy: bool = True) -> dict[CanonicalKey, np.ndarray]:
    """Every mapped tensor of ``adapter`` as an in-memory numpy array (stored dtype, stored bytes),
    keyed by canonical key; with ``with_alpha`` every module that has a rank also gets an ``alpha``
    (a 0-d float32 array when synthesized; see module docstring). Unknown keys are left out.
    ``copy=False``: read-only views of one memory map of the file instead (no copy of the whole adapter).

    Which alphas were synthesized: those whose key is not in ``adapter.mapping.mapped.values()``.
    """
    by_name = adapter.mapping.mapped
    data = _mapped_data(adapter)
    tensors = {by_name[info.name]: np.array(arr) if copy else arr
               for info, arr in _tensor_views(adapter, data) if info.name in by_name}
    factors = [adapter.header.tensors[name] for name, key in by_name.items() if key.role != "alpha"]
    # bad shapes/values: one error naming file and module
    check_modules(by_module(tensors), adapter.path, values_checked=_sixteen_bit_finite(data, adapter.header, factors))
    for key, value in tensors.items():
        if key.role == "alpha" and value.ndim:  # [1] or [1, 1]: the 0-d scalar every loader reads
            tensors[key] = value.reshape(())
    if with_alpha:
        for module, alpha in module_alphas(adapter).items():
            key = CanonicalKey(module.component, module.path, "alpha")
            if key not in tensors:
                tensors[key] = np.array(check_alpha(module, alpha, adapter.path), dtype=np.float32)
    return tensors


def _mapped_data(adapter: AdapterFile) -> np.ndarray | None:
    """The file's data section as read-only bytes over one memory map (the arrays keep it alive); None when empty.

    Plain ndarrays over an ``mmap``: ``safetensors_io.memmap_tensors`` gives ``np.memmap`` views, whose every
    reshape or slice runs numpy's memmap bookkeeping (a third of reading a 3,000-tensor adapter)."""
    import mmap

    header = adapter.header
    if header.data_size == 0:
        return None
    with open(adapter.path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(mapped, dtype=np.uint8, count=header.data_size, offset=header.data_offset)


def _tensor_views(adapter: AdapterFile, data: np.ndarray | None):
    """(info, read-only array) for every tensor: views of ``data`` (zeros when the file has no data)."""
    from ..safetensors_io import numpy_dtype

    for info in adapter.header.tensors.values():
        if data is None:
            yield info, np.zeros(info.shape, dtype=numpy_dtype(info.dtype))
        else:
            yield info, data[info.start:info.end].view(numpy_dtype(info.dtype)).reshape(info.shape)


_SCAN_ELEMENTS = 1 << 17  # 256 KiB of 16-bit values: a chunk and its masked copy stay in the L2 cache


def _sixteen_bit_finite(data: np.ndarray | None, header, factors) -> bool:
    """True when every one of ``factors`` (TensorInfo) is fp16 or bf16 and no 16-bit float of the file is infinite
    or NaN, by one chunked pass over the file's 16-bit float ranges (adjacent tensors of one dtype merged): the
    per-tensor check (``validate``) costs a masked copy and a call per tensor, most of reading a large adapter.
    False says nothing: the per-tensor check then runs (and names the module), as it does for wider floats."""
    if data is None or not factors or any(info.dtype not in _BITS16 for info in factors):
        return False
    ranges: list[list] = []  # [mask, start, end]
    for info in sorted((i for i in header.tensors.values() if i.dtype in _BITS16), key=lambda i: i.start):
        mask = EXPONENT_MASKS[_BITS16[info.dtype]]
        if ranges and ranges[-1][0] == mask and ranges[-1][2] == info.start:
            ranges[-1][2] = info.end
        else:
            ranges.append([mask, info.start, info.end])
    for mask, start, end in ranges:
        values = data[start:end].view(np.uint16)  # a 16-bit tensor spans an even number of bytes
        for offset in range(0, values.size, _SCAN_ELEMENTS):
            if int((values[offset:offset + _SCAN_ELEMENTS] & mask).max()) == mask:  # an all-ones exponent
                return False
    return True


_BITS16 = {"F16": "float16", "BF16": "bfloat16"}  # safetensors dtype -> numpy name (EXPONENT_MASKS' keys)


# --- metadata helpers -----------------------------------------------------------------------------------


def parent_record(adapter: AdapterFile, *, weight: float | None = None):
    """A provenance ``Parent`` for an input file: its sha256 and AutoV3, file name and (merge) weight.

    The two hashes come from ``adapter.hashes`` when those were computed already, else from the registry's hash
    cache when the registry has seen the file (``registry scan``, or an earlier operation's output), else from one
    read pass (``hashes.content_hashes``), remembered in the registry when there is one. Hashing releases the
    GIL: operations run this on a thread beside their maths.
    """
    from ..schema import Parent

    known = adapter.__dict__.get("hashes")  # functools.cached_property's cache: never hash a file twice
    if known is not None:
        sha256, tensor_sha256 = known.sha256, known.autov3
    else:
        sha256, tensor_sha256 = _input_hashes(adapter.path, adapter.header.data_offset)
    return Parent(sha256=sha256, tensor_sha256=tensor_sha256, name=adapter.path.name[:500], weight=weight)


def _input_hashes(path: Path, data_offset: int) -> tuple[str, str]:
    """(sha256, AutoV3) of an input file: from the registry's hash cache, else hashed and then remembered (only
    when the file's key is the same after the read as before it, so the hashes are those of the bytes read)."""
    from ..hashes import content_hashes
    from ..registry import hash_cache

    cached = hash_cache.lookup(path)
    if cached is not None:
        return cached
    before = hash_cache.file_key(path)
    sha256, tensor_sha256 = content_hashes(path, data_offset)
    if before is not None:
        hash_cache.remember(path, sha256, tensor_sha256, key=before)
    return sha256, tensor_sha256


def op_metadata(record, *, operation: str, params: Mapping[str, Any], parents: Sequence[Any]):
    """``record`` (an AdapterMetadata, or None for a fresh one) with the provenance of this operation.

    Network facts and tensor_sha256 are filled by ``write_op_output`` from what it writes.
    """
    from .. import __version__
    from ..schema import AdapterMetadata, Provenance

    record = record if record is not None else AdapterMetadata()
    provenance = Provenance(created_at=datetime.now(timezone.utc).replace(microsecond=0), tool="lorareg",
                            tool_version=__version__, operation=operation, params=dict(params),
                            parents=list(parents))
    return record.model_copy(update={"provenance": provenance, "tensor_sha256": None})


def carried_header(adapter: AdapterFile) -> dict[str, str]:
    """The input's header keys an output keeps (tag frequencies, training keys, a tool's own keys), without
    those that describe the old tensors or format (``STALE_HEADER_KEYS``)."""
    return {k: v for k, v in adapter.header.metadata.items() if k not in STALE_HEADER_KEYS}


def _network_info(adapter: AdapterFile):
    """The record's ``network`` for a written file: what metadata import infers from its weights (so the
    record and the weights never disagree), plus the alpha of files that keep it in the peft config."""
    from ..schema import NetworkInfo

    facts = adapter.facts
    alphas = module_alphas(adapter)

    def common(kind: str) -> float | None:
        values = [alphas[m] for m, info in adapter.modules.items() if info.kind == kind and m in alphas]
        return Counter(values).most_common(1)[0][0] if values else None

    def stated(value: float | None) -> float | None:  # an alpha of 0 means alpha = rank (kohya): none stated
        return value if value else None

    alpha = facts.alpha if facts.alpha is not None else common("linear")
    conv_alpha = facts.conv_alpha if facts.conv_alpha is not None else common("conv")
    known_type = facts.network_type in ("lora", "locon", "loha", "lokr", "dora", "full")
    return NetworkInfo(
        type=facts.network_type if known_type else None,
        rank=facts.rank, alpha=stated(alpha) if facts.rank is not None else None,
        conv_rank=facts.conv_rank, conv_alpha=stated(conv_alpha) if facts.conv_rank is not None else None,
        rank_pattern=dict(facts.rank_pattern) if facts.rank is not None else {},
        alpha_pattern={k: v for k, v in facts.alpha_pattern.items() if v} if facts.rank is not None else {},
        components=list(facts.components), target_modules=list(facts.target_modules),
    )


# --- writing ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenOutput:
    """What ``write_op_output`` put in place: the path, its sha256 and AutoV3, and verify's report."""

    path: Path
    sha256: str
    tensor_sha256: str
    report: Any  # loraregistry.verify.Report
    forced: bool = False  # True when verify found errors and ``force`` kept the file anyway


def check_output_path(output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]) -> Path:
    """Refuse an output path that is one of the inputs (same file, however it is spelled)."""
    out = Path(output)
    for item in inputs:
        src = Path(item)
        same = os.path.realpath(out) == os.path.realpath(src)  # Path.resolve raises on a symlink loop
        if not same and out.exists() and src.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(out, src)
        if same:
            raise OutputIsInput("the output path is one of the inputs; refusing to overwrite an input", path=out,
                                hint="choose another -o path")
    if not out.parent.is_dir() and str(out.parent):
        raise FileAccessError("output folder does not exist", path=out.parent, hint="create it first")
    return out


def write_op_output(path: str | os.PathLike[str], tensors: Mapping[CanonicalKey, np.ndarray], *, format: str,
                    dialect: Mapping[str, str] | None = None, metadata=None,
                    header: Mapping[str, str] | None = None, inputs: Iterable[str | os.PathLike[str]] = (),
                    force: bool = False, base: str | None = None) -> WrittenOutput:
    """Write canonical ``tensors`` as ``format`` to ``path`` via a verified temporary file.

    ``metadata``: the record to store (``op_metadata``); its ``network`` and ``tensor_sha256`` are
    replaced by what is written. ``header``: other str->str keys to keep. ``inputs``: paths the output
    must not overwrite (OutputIsInput, exit 2, nothing written). ``base``: passed to ``verify`` (an
    architecture id or a model folder/checkpoint). Verify errors -> OutputFailsVerify (exit 1) listing
    them, and no file, unless ``force``. Alpha is stored the way ``format`` stores it (``writer``).

    One write, one hash of each kind (``outfile``): the record is built from the tensors in memory while a
    second thread hashes their bytes (AutoV3); the file is written once, the data first behind the header's room
    (a hash has one length whatever its value), then the header that records the hash; the whole-file sha256 is
    taken from memory on a thread during the fsync and verify. Verify starts from the header and modules in memory
    (``written_verify``: the file's header and alphas are not read and parsed again), scans the values from the
    written file, and is told the tensor hash instead of re-hashing.
    """
    from ..atomic_write import new_temp_path
    from ..hashes import known_tensor_sha256
    from ..registry import hash_cache
    from ..schema import merge_projection
    from ..verify import verify
    from ..writer import adapter_layout
    from .outfile import Layout, OutputFile
    from .written_verify import final_header, verify_written

    out = check_output_path(path, inputs)
    temp = new_temp_path(out)  # not *.safetensors: a killed run's leftover is no adapter, and is swept
    try:
        with about(out):  # a full disk or a vanished folder: one line naming the output
            named, extra = adapter_layout(tensors, format=format, dialect=dialect, header=header)
            layout = Layout.of(named)
            output = OutputFile(layout)  # hashing the data from here on
            try:
                encoded, parsed = layout.header(extra, path=temp)
                final = extra
                draft = _draft_or_none(parsed, layout.arrays, temp) if metadata is None else None
                if metadata is not None:
                    draft = _in_memory_adapter(parsed, layout.arrays, temp)
                    record = metadata.model_copy(update={"network": _network_info(draft)})

                    def with_hash(data_sha256: str) -> dict[str, str]:
                        return merge_projection(extra, record.model_copy(update={"tensor_sha256": data_sha256}))

                    # Measured and validated with a stand-in hash: the real one, 64 hex digits as well, changes
                    # neither the size nor anything the parse checks.
                    encoded, parsed = layout.header(with_hash(_ANY_SHA256), path=temp)
                output.write_data(temp, len(encoded))
                data_sha256 = output.data_sha256()
                if metadata is not None:
                    final = with_hash(data_sha256)
                    encoded = layout.encoded_header(final)
                output.finish(encoded)  # the whole-file sha256 and the fsync run while verify reads the file
                with known_tensor_sha256(temp, parsed.data_offset, data_sha256):
                    if draft is None:  # keys in no known format: verify says so its own way
                        report = verify(temp, base=base)
                    else:  # the header and modules from memory; the values scanned from the file
                        report = verify_written(temp, final_header(parsed, final), draft, base=base)
                sha256 = output.sha256()
            finally:
                output.close()
            written_key = hash_cache.file_key(temp)  # the bytes just hashed; the rename keeps inode and mtime
            errors = [f for f in report.findings if f.severity == "error"]
            if errors and not force:
                listed = "; ".join(f"{f.code} {f.message}" for f in errors[:5])
                more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
                raise OutputFailsVerify(f"the output fails verify, not written: {listed}{more}", path=out,
                                        hint="fix the inputs, pass a real base to check against, or --force")
            report.path = str(out)
            os.replace(temp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    _fsync_folder(out.parent)
    # The next operation or scan that reads the output finds its hashes in the registry's cache (if any).
    hash_cache.remember(out, sha256, data_sha256, key=written_key)
    return WrittenOutput(path=out, sha256=sha256, tensor_sha256=data_sha256, report=report, forced=bool(errors))


def _in_memory_adapter(header, arrays: Mapping[str, np.ndarray], path: Path) -> AdapterFile:
    """The ``AdapterFile`` that ``AdapterFile.open`` will read from the file ``header`` and ``arrays`` make, built
    before the file exists: the header's modules, with the scalar alphas read from the arrays instead of the data."""
    adapter = AdapterFile.from_header(header, path=path)
    for module, info in adapter.modules.items():
        key = info.keys.get("alpha")
        if key is not None:
            alpha = arrays[key]
            scalar = alpha.size == 1 and (alpha.dtype.kind in "fiu" or alpha.dtype.name.startswith(("bfloat", "float8")))
            value = float(alpha.reshape(-1)[0]) if scalar else None  # what AdapterFile reads from the stored bytes
            adapter.modules[module] = info.replace(alpha=value, alpha_unknown=False)
    return adapter


def _draft_or_none(header, arrays: Mapping[str, np.ndarray], path: Path) -> AdapterFile | None:
    """``_in_memory_adapter``, or None for keys in no known format (verify then reads the file and reports them)."""
    from ..errors import UnknownAdapterFormat

    try:
        return _in_memory_adapter(header, arrays, path)
    except UnknownAdapterFormat:
        return None


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # make the rename durable where the platform allows
        fd = os.open(folder if str(folder) else ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
