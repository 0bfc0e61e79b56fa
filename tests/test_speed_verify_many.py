"""What the speed work on ``lorareg verify`` over many files relies on, checked for correctness only (no times).

(a) lorareg's own process freezes the collector's objects before it exits (the interpreter's last full collection
skipped), an in-process ``main([...])`` never does, and the process's output and exit code are those of an
in-process run; (b) a tensor scan over many files imports numpy before the fork only where the processes would
outrun their standard-library budgets.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loraregistry.cli import main
from tests.adapters import lora_tensors, write_adapter

ROOT = Path(__file__).resolve().parents[1]

# Run as the console script does (main() reads sys.argv), then report whether the collector was frozen.
_AS_SCRIPT = r"""
import atexit, gc, sys
atexit.register(lambda: sys.stderr.write("FROZEN %d\n" % gc.get_freeze_count()))
from loraregistry.cli import main
sys.exit(main())
"""


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    return write_adapter(tmp_path / "a.safetensors", lora_tensors("sd1", rank=2, seed=3))


@pytest.mark.parametrize("args", [["verify", "--json", "--no-tensors"], ["verify", "-q"]])
def test_the_console_script_freezes_before_exit_and_prints_as_in_process(args, adapter, capsys):
    code = main([*args, str(adapter)])
    expected = capsys.readouterr().out
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-c", _AS_SCRIPT, *args, str(adapter)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    assert done.returncode == code
    assert done.stdout == expected
    frozen = [int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("FROZEN ")]
    assert frozen and frozen[0] > 0
    assert [line for line in done.stderr.splitlines() if not line.startswith("FROZEN ")] == []


def test_an_in_process_main_leaves_the_collector_as_it_was(adapter, capsys):
    before = gc.get_freeze_count()
    main(["verify", "--no-tensors", "--json", str(adapter)])
    capsys.readouterr()
    assert gc.get_freeze_count() == before


# (b) A scan over many files imports numpy once, before the fork, when the processes together would scan more than
# their standard-library budget (health.STDLIB_SCAN_BYTES each); the fields are the same either way (test_scan_stdlib).
@pytest.mark.parametrize(("sizes", "processes", "expected"), [
    ([50, 50], 1, False),  # exactly the budget: still the standard library
    ([50, 51], 1, True),
    ([60, 60], 2, False),  # two processes, two budgets
    ([150, 60], 2, True),
    ([150, None, 60], 2, True),  # a missing file counts nothing (its error is reported per file)
    ([150, None], 2, False),
    ([], 4, False),
])
def test_numpy_is_imported_before_the_fork_only_past_every_process_budget(sizes, processes, expected, tmp_path,
                                                                         monkeypatch):
    from loraregistry.cli.verify_run import _scans_past_stdlib_budget
    from loraregistry.verify import health

    monkeypatch.setattr(health, "STDLIB_SCAN_BYTES", 100)
    files = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i}.safetensors"
        if size is not None:
            path.write_bytes(bytes(size))
        files.append(str(path))
    assert _scans_past_stdlib_budget(files, processes) is expected
