#!/usr/bin/env python3
"""The drift report: what the newest releases the package index serves would change and break.

    python3 scripts/drift.py             # full report: changed packages, failing tests, then one summary line
    python3 scripts/drift.py --summary   # only the summary line (what .ci/run prints after the locked suite)

It builds .venv-drift from scratch with the newest versions pyproject.toml's ranges allow (no lock; torch stays
at 2.13.0, the CPU build, as everywhere here: a newer torch is a CUDA build of several GB), runs the whole suite there, and compares with
requirements/lock-dev.txt. It reports; it never fails (exit 0), unless it could not build the venv (exit 2). The
lock changes only by a deliberate commit: scripts/lock.py, then the suite. Details go to .drift/ (report.txt,
pytest.log, junit.xml, freeze.txt).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-drift"
OUT = ROOT / ".drift"
TORCH = "torch==2.13.0"


def _pins(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[name.strip().lower().replace("_", "-")] = re.sub(r"\+\S+$", "", version.strip())
    return out


def build_venv(log) -> Path:
    shutil.rmtree(VENV, ignore_errors=True)
    python = VENV / "bin" / "python"
    # torch stays at the locked CPU build: an eager upgrade would fetch a multi-GB CUDA build of a newer one
    OUT.mkdir(exist_ok=True)
    keep_torch = OUT / "keep-torch.txt"
    keep_torch.write_text(f"{TORCH}\n")
    steps = [
        [sys.executable, "-m", "venv", str(VENV)],
        [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "--quiet", TORCH],
        [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "--upgrade-strategy", "eager",
         "-c", str(keep_torch), "-e", f"{ROOT}[train,dev]"],
    ]
    no_deps = ROOT / "requirements" / "no-deps.txt"
    if no_deps.is_file():
        steps.append([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-r", str(no_deps)])
    for cmd in steps:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd[-3:])}` failed (see {OUT / 'pytest.log'})")
    return python


def changed_packages(python: Path) -> tuple[list[str], str]:
    frozen = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable"], capture_output=True,
                            text=True, check=True).stdout
    (OUT / "freeze.txt").write_text(frozen)
    locked, newest = _pins((ROOT / "requirements" / "lock-dev.txt").read_text()), _pins(frozen)
    no_deps = ROOT / "requirements" / "no-deps.txt"
    if no_deps.is_file():  # installed as they are, outside the resolution
        locked.update(_pins(no_deps.read_text()))
    changes = [f"{name} {locked[name]} -> {newest[name]}" for name in sorted(locked.keys() & newest.keys())
               if locked[name] != newest[name]]
    changes += [f"{name} new {newest[name]}" for name in sorted(newest.keys() - locked.keys())]
    changes += [f"{name} {locked[name]} gone" for name in sorted(locked.keys() - newest.keys())]
    return changes, frozen


def run_suite(python: Path, log) -> tuple[int, list[str]]:
    junit = OUT / "junit.xml"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    subprocess.run([str(python), "-m", "pytest", "-n", "2", "-q", "-p", "no:cacheprovider",
                    f"--junitxml={junit}"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if not junit.is_file():
        return 0, ["the suite did not run (see .drift/pytest.log)"]
    ok, failing = 0, []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = {child.tag for child in case}
        if outcome & {"failure", "error"}:
            failing.append(f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}")
        elif "skipped" not in outcome:
            ok += 1
    return ok, failing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", action="store_true", help="print only the one summary line")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    with open(OUT / "pytest.log", "w") as log:
        try:
            python = build_venv(log)
        except RuntimeError as exc:
            print(f"drift report: could not build the newest-versions venv: {exc}")
            return 2
        changes, _ = changed_packages(python)
        ok, failing = run_suite(python, log)
    verdict = ("nothing breaks" if not failing else
               f"{len(failing)} tests break: {', '.join(failing[:5])}{' ...' if len(failing) > 5 else ''}")
    summary = (f"drift report: {len(changes)} packages differ from the lock"
               f"{' (' + ', '.join(changes[:8]) + (' ...' if len(changes) > 8 else '') + ')' if changes else ''}; "
               f"suite on the newest versions: {ok} ok, {verdict}")
    report = "\n".join(["Packages that differ from requirements/lock-dev.txt:", *(f"  {c}" for c in changes),
                        "Tests failing on the newest versions:", *(f"  {f}" for f in failing), "", summary])
    (OUT / "report.txt").write_text(report + "\n")
    print(summary if args.summary else report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
