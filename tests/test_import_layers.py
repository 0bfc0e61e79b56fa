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
