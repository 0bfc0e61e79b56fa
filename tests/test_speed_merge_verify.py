"""An operation's output is verified from what the writer holds (``ops.written_verify``), with the report a
from-disk ``verify`` of the written file gives, and a bad output refused exactly as before (issue 14, target 4).

The differential: every merge of ``test_speed_merge_bytes`` (and a few with ``--base``) gives, in memory, the report
``verify(output)`` gives reading the file back; and outputs that fail verify (values gone infinite, modules that fit
no base) fail the command with the same exit code and message, leaving no file, whichever way verify runs.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from loraregistry.cli import main
from loraregistry.ops import written_verify
from loraregistry.ops.merge import MergeInput, merge
from loraregistry.verify import verify
from tests.adapters import lora_tensors, write_adapter
from tests.test_speed_merge_bytes import CASES, parents  # noqa: F401 (parents: the module's fixture)

_DTYPE_OPTION = {"--dtype": "dtype", "--to": "to"}
_BASES = {"no base": None, "sd1 named": "sd1", "sdxl named (fits not)": "sdxl-base"}


def _options(extra: list[str]) -> dict[str, str]:
    """CASES' command-line options as ``merge`` keyword arguments."""
    return {_DTYPE_OPTION[flag]: value for flag, value in zip(extra[::2], extra[1::2])}


@pytest.mark.parametrize("case", CASES)
def test_in_memory_report_equals_a_from_disk_verify(case, parents, tmp_path):  # noqa: F811
    chosen, extra, _ = CASES[case]
    out = tmp_path / "merged.safetensors"
    result = merge([MergeInput(parents[name], weight) for name, weight in chosen], out, **_options(extra))
    assert result.output.report == verify(out)
    assert result.output.report.findings == verify(out).findings  # (the same, spelled out)


@pytest.mark.parametrize("base", _BASES)
def test_in_memory_report_equals_a_from_disk_verify_with_a_base(base, parents, tmp_path):  # noqa: F811
    out = tmp_path / "merged.safetensors"
    result = merge([MergeInput(parents["a16"], 0.8), MergeInput(parents["bbf"], 0.5)], out, base=_BASES[base],
                   force=True)
    assert result.output.report == verify(out, base=_BASES[base])


def _from_disk(path, header, draft, *, base):
    """The verify the writer ran before ``written_verify``: the file opened and read again."""
    return verify(path, base=base)


def _run(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(args)
    return code, err.getvalue()


def _overflowing(folder: Path) -> list[str]:
    """A merge whose weight sends fp16 ``up`` values to infinity (two weights: ``up`` scaled, not kept as stored):
    the output fails verify's value scan."""
    a = write_adapter(folder / "a.safetensors", lora_tensors("sd1", rank=4, seed=1, small=False))
    return [f"{a}:1e30", f"{a}:0.5"]


def _no_base_fits(folder: Path) -> list[str]:
    """Tiny-model shapes: modules that fit no real base (a header-level error)."""
    golden = Path(__file__).parent / "golden" / "sd1_kohya.safetensors"
    return [str(golden), str(golden)]


@pytest.mark.parametrize("bad_output", [_overflowing, _no_base_fits])
def test_a_bad_output_fails_the_same_way(bad_output, tmp_path, monkeypatch):
    inputs = bad_output(tmp_path)
    outcomes = {}
    for way in ("in memory", "from disk"):
        folder = tmp_path / way.replace(" ", "-")
        folder.mkdir()
        with monkeypatch.context() as patched:
            if way == "from disk":
                patched.setattr(written_verify, "verify_written", _from_disk)
            code, err = _run(["merge", *inputs, "-o", str(folder / "out.safetensors")])
        outcomes[way] = (code, err.replace(str(folder), "FOLDER"))
        assert list(folder.iterdir()) == []  # nothing written, no temporary file left
    assert outcomes["in memory"] == outcomes["from disk"]
    assert outcomes["in memory"][0] == 1 and "fails verify" in outcomes["in memory"][1]


def test_a_forced_bad_output_reports_what_a_from_disk_verify_finds(tmp_path):
    inputs = _overflowing(tmp_path)
    out = tmp_path / "forced.safetensors"
    result = merge([MergeInput.parse(text) for text in inputs], out, force=True)
    assert result.output.forced and not result.output.report.ok
    assert result.output.report == verify(out)
    assert any(f.severity == "error" for f in result.output.report.findings)


def test_an_output_without_a_record_reports_what_a_from_disk_verify_finds(parents, tmp_path):  # noqa: F811
    from loraregistry.adapter import AdapterFile
    from loraregistry.ops.io import load_canonical, write_op_output

    out = tmp_path / "plain.safetensors"
    written = write_op_output(out, load_canonical(AdapterFile.open(parents["a16"])), format="kohya",
                              header={"ss_note": "kept"})
    assert written.report == verify(out)


@pytest.mark.parametrize("operation", ["convert to peft", "convert to diffusers", "resize to rank 2"])
def test_other_operations_report_what_a_from_disk_verify_finds(operation, parents, tmp_path):  # noqa: F811
    from loraregistry.ops.convert import convert
    from loraregistry.ops.resize import ResizeSettings, resize

    out = tmp_path / "out.safetensors"
    if operation.startswith("convert"):
        result = convert(parents["bbf"], out, to=operation.split()[-1])
    else:
        result = resize(parents["bbf"], out, ResizeSettings(rank=2))
    assert result.output.report == verify(out)
