"""The package's layers: the core never reaches up into the operations, verify, the Hub, training or the CLI.

Read from the source (every import, module-level or inside a function; imports under ``TYPE_CHECKING`` only
name types and are left out), so a lazy import cannot hide a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "loraregistry"
# The core: reading, naming and describing adapters. What it may not import: the layers built on it.
CORE = ("adapter", "alphas", "canonical", "errors", "hashes", "peft_patterns", "safetensors_io", "formats",
        "schema", "architectures")
UPPER = ("ops", "verify", "hub", "registry", "train", "cli", "fix", "demo")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(path: Path) -> set[str]:
    """Absolute names of the loraregistry modules that ``path`` imports."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("loraregistry")}


def _in(name: str, layer: str) -> bool:
    return name == f"loraregistry.{layer}" or name.startswith(f"loraregistry.{layer}.")


def core_files() -> list[Path]:
    files = []
    for layer in CORE:
        folder, module = PACKAGE / layer, PACKAGE / f"{layer}.py"
        files += sorted(folder.rglob("*.py")) if folder.is_dir() else [module]
    return files


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_module_imports_no_upper_layer(path):
    upward = sorted(name for name in imports_of(path) if any(_in(name, layer) for layer in UPPER))
    assert upward == [], f"{path.relative_to(PACKAGE.parent)} imports {upward}"


def test_the_checker_sees_lazy_imports(tmp_path):
    sample = PACKAGE / "adapter.py"
    assert "loraregistry.alphas" in imports_of(sample)  # imported inside a method


# --- what a header-level verify imports --------------------------------------------------------------------

_IMPORTS_OF_VERIFY = """
import io, json, sys, contextlib
from loraregistry.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(["verify", "--no-tensors", "--json", sys.argv[1]])
json.loads(out.getvalue())
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""
# Heavy or needless for a header-level verify of a file without a lorareg record: pydantic and the modules that
# build models (validation is light, see schema.light), click (the plain verify command line is read without it,
# cli/fast_args.py), rich (--json prints plain text), numpy and torch (no tensor is read), the Hub client.
_NOT_FOR_VERIFY = ("pydantic", "pydantic_core", "loraregistry.schema.metadata", "loraregistry.schema.foreign_models",
                   "loraregistry.verify.output_models", "click", "rich", "numpy", "torch", "huggingface_hub")


def test_header_level_verify_of_a_kohya_file_imports_little(tmp_path):
    import json
    import subprocess
    import sys

    from tests.adapters import lora_tensors, write_adapter

    path = write_adapter(tmp_path / "kohya.safetensors", lora_tensors("sd1"),
                         {"ss_network_module": "networks.lora", "ss_network_dim": "2", "ss_network_alpha": "1.0",
                          "ss_base_model_version": "sd_v1", "ss_training_started_at": "1684342410.5",
                          "modelspec.trigger_phrase": "sks", "modelspec.license": "mit"})
    done = subprocess.run([sys.executable, "-c", _IMPORTS_OF_VERIFY, str(path)], capture_output=True, text=True,
                          check=True, cwd=PACKAGE.parent)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    loaded = [name for name in result["modules"] if any(name == top or name.startswith(top + ".")
                                                         for top in _NOT_FOR_VERIFY)]
    assert loaded == []
    assert "loraregistry.schema.light" in result["modules"]  # the metadata was judged, lightly
