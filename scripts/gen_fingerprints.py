"""Generate the shipped module fingerprints of each base architecture.

For every ``loraregistry/architectures/configs/<name>.json`` this builds each component on the meta
device (no weights, no downloads) from the public config values written there, records every
``nn.Linear`` and ``nn.Conv2d`` (path, kind, in, out, kernel) and writes
``loraregistry/architectures/data/<name>.json.gz`` with deterministic bytes.

    python scripts/gen_fingerprints.py [--out DIR] [NAME ...]

Needs torch, diffusers and transformers (the ``train`` extra); the library reads the output without them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from loraregistry.architectures.build import CLIP_CLASSES, CONFIG_DIR, build_component  # noqa: E402

ARCH_DIR = ROOT / "loraregistry" / "architectures"
DATA_DIR = ARCH_DIR / "data"
FORMAT_VERSION = 1
__all__ = ["CLIP_CLASSES", "CONFIG_DIR", "build_component", "fingerprint_doc", "generate", "module_rows"]


def module_rows(model, *, clip: bool) -> list[list]:
    """[path, "linear", in, out] or [path, "conv", in, out, kh, kw] for each Linear/Conv2d, sorted by path."""
    import torch

    rows = []
    for path, module in model.named_modules():
        # transformers 5 CLIPTextModel drops the `text_model.` level that WithProjection keeps; canonical keeps it.
        if clip and not path.startswith("text_model.") and path != "text_projection":
            path = f"text_model.{path}"
        if isinstance(module, torch.nn.Linear):
            rows.append([path, "linear", module.in_features, module.out_features])
        elif isinstance(module, torch.nn.Conv2d):
            rows.append([path, "conv", module.in_channels, module.out_channels, *module.kernel_size])
    rows.sort(key=lambda row: row[0])
    return rows


def fingerprint_doc(config_doc: dict) -> dict:
    components = {}
    for component, spec in sorted(config_doc["components"].items()):
        model = build_component(spec)
        components[component] = module_rows(model, clip=spec["class"] in CLIP_CLASSES)
    return {"format": FORMAT_VERSION, "name": config_doc["name"], "components": components}


def encode(doc: dict) -> bytes:
    """Deterministic bytes: sorted keys, no whitespace, gzip without mtime or file name."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"
    return gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)


def generate(names: list[str] | None = None, out_dir: Path = DATA_DIR) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for config_path in sorted(CONFIG_DIR.glob("*.json")):
        config_doc = json.loads(config_path.read_text(encoding="utf-8"))
        if names and config_doc["name"] not in names:
            continue
        target = out_dir / f"{config_doc['name']}.json.gz"
        target.write_bytes(encode(fingerprint_doc(config_doc)))
        written[config_doc["name"]] = target
    missing = set(names or ()) - set(written)
    if missing:
        raise SystemExit(f"no config for: {', '.join(sorted(missing))}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="fingerprint names (default: all configs)")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="output folder (default: the package data)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    for name, path in generate(args.names or None, args.out).items():
        print(f"{name}: {path} ({path.stat().st_size} bytes)")
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
