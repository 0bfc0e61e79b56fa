"""An op's output is written data first (behind the room kept for its header), the header last: a write that fails
anywhere (here: the file size limit, ``RLIMIT_FSIZE``, with SIGXFSZ ignored so that the write fails with EFBIG as
on a full disk) leaves no file, no temp file and one error line naming the output, exit 2."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loraregistry.safetensors_io import read_header
from tests.adapters import lora_tensors, write_adapter


@pytest.fixture(scope="module")
def merge_case(tmp_path_factory):
    """Two SD1 parents and the size of their merge (whole file, header) written without a limit."""
    folder = tmp_path_factory.mktemp("parents")
    a = write_adapter(folder / "a.safetensors", lora_tensors("sd1", rank=8, seed=1))
    b = write_adapter(folder / "b.safetensors", lora_tensors("sd1", rank=4, seed=2, dtype=np.float32))
    out = folder / "full.safetensors"
    assert _merge(a, b, out, limit=None).returncode == 0
    return a, b, out.stat().st_size, read_header(out).data_offset


def _merge(a: Path, b: Path, out: Path, limit: int | None) -> subprocess.CompletedProcess:
    def limited() -> None:  # in the child, before exec: both survive exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "loraregistry", "merge", f"{a}:0.7", f"{b}:0.2", "-o", str(out)],
                          preexec_fn=limited if limit is not None else None, capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "LORAREG_HOME": str(out.parent / "no-registry"),
                               "PATH": "/usr/bin:/bin",
                               # a .pyc written under the limit would be cut short, and kept: never write one
                               "PYTHONDONTWRITEBYTECODE": "1"})


# where the write stops: within the header's room, within the data, one byte short of the whole file
LIMITS = {"in the header's room": lambda size, header: header // 2,
          "in the data": lambda size, header: (header + size) // 2,
          "at the last byte": lambda size, header: size - 1}


@pytest.mark.parametrize("where", LIMITS)
def test_a_write_that_fails_leaves_nothing_and_says_so_in_one_line(where, merge_case, tmp_path):
    a, b, size, header = merge_case
    out = tmp_path / "merged.safetensors"
    done = _merge(a, b, out, limit=LIMITS[where](size, header))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and str(out) in lines[0] and "too large" in lines[0], done.stderr
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temp file
