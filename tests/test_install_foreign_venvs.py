"""lorareg's core installs into the venvs LoRA users already have without changing a single installed package,
and its commands run there.

Each case builds a venv holding a tool's pinned requirements (the packages that overlap lorareg's dependency
closure, plus the heavy ML libraries that constrain it; torch and CUDA-only packages left out), records
``pip freeze``, installs lorareg from this checkout with plain ``pip install`` (no constraints, no --no-deps),
and compares. Needs the package index (as .ci/run does); slow (about a minute each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.adapters import lora_tensors, write_adapter

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"

# kohya-ss/sd-scripts requirements.txt pins (current main; sd-scripts also pins accelerate, bitsandbytes,
# opencv and pytorch-lightning, which need torch or a GPU and touch none of lorareg's dependencies).
KOHYA = ["huggingface-hub==0.34.3", "diffusers==0.32.1", "transformers==4.54.1", "safetensors==0.4.4",
         "numpy==1.26.4", "rich==13.7.0", "toml==0.10.2", "voluptuous==0.13.1", "imagesize==1.4.1",
         "einops==0.7.0", "ftfy==6.1.1", "sentencepiece==0.2.0"]
# ComfyUI requirements.txt (current main) as pip resolves it today, minus torch, its front-end packages and the
# libraries that share nothing with lorareg's closure (scipy, av, aiohttp, kornia, ...); numpy held at 1.26.4, as
# many ComfyUI installs that started on numpy 1 still have it.
COMFYUI = ["numpy==1.26.4", "transformers>=4.50.3", "tokenizers>=0.13.3", "safetensors>=0.4.2", "pyyaml", "Pillow",
           "tqdm", "psutil", "filelock", "requests", "blake3", "einops", "pydantic~=2.0", "pydantic-settings~=2.0"]
VENVS = {"kohya-sd-scripts": KOHYA, "comfyui": COMFYUI}


def _freeze(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                         check=True).stdout
    pins = {}
    for line in out.splitlines():
        if "==" in line:
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def _pip(python: Path, *args: str) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("tool", sorted(VENVS))
def test_core_installs_without_changing_anything_and_runs(tool, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, lorareg = venv / "bin" / "python", venv / "bin" / "lorareg"
    _pip(python, *VENVS[tool])
    before = _freeze(python)
    _pip(python, str(ROOT))
    after = _freeze(python)
    changed = {name: f"{version} -> {after.get(name)}" for name, version in before.items()
               if after.get(name) != version}
    assert changed == {}, f"installing lorareg into a {tool} venv changed {changed}"
    if tool == "kohya-sd-scripts":
        assert after["huggingface-hub"] == "0.34.3"

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["HF_HUB_OFFLINE"] = "1"
    # real SD1.5 / SDXL module names and shapes: these must verify clean there, as here
    files = [str(write_adapter(tmp_path / f"{arch}.safetensors", lora_tensors(arch, small=False)))
             for arch in ("sd1", "sdxl-base")]
    files += sorted(str(p) for p in GOLDEN.glob("*.safetensors"))  # tiny bases: the same verdicts as here
    verify = subprocess.run([str(lorareg), "verify", "--json", *files], capture_output=True, text=True, env=env,
                            cwd=tmp_path)
    ours = subprocess.run([str(ROOT / ".venv" / "bin" / "lorareg"), "verify", "--json", *files],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert verify.returncode in (0, 1), verify.stderr[-3000:]
    there, here = json.loads(verify.stdout)["files"], json.loads(ours.stdout)["files"]
    assert [f["ok"] for f in there[:2]] == [True, True], there[:2]
    assert there == here, f"verify in the {tool} venv disagrees with the locked venv"

    source = files[0]
    for cmd in (["inspect", source], ["meta", "show", source],
                ["convert", source, "-o", str(tmp_path / "peft.safetensors"), "--to", "peft"],
                ["resize", source, "-o", str(tmp_path / "r1.safetensors"), "--rank", "1"],
                ["merge", f"{source}:0.5", f"{source}:0.5", "-o", str(tmp_path / "merged.safetensors")],
                ["verify", str(tmp_path / "peft.safetensors"), str(tmp_path / "r1.safetensors"),
                 str(tmp_path / "merged.safetensors")]):
        proc = subprocess.run([str(lorareg), *cmd], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert proc.returncode == 0, f"lorareg {cmd[0]} in a {tool} venv: {proc.stderr[-2000:]}"
