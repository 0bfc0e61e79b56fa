"""Write ``loraregistry/architectures/data/index.json.gz`` from the shipped ``<name>.json.gz`` fingerprints.

    .venv/bin/python scripts/gen_fingerprint_index.py [--check]

The index is derived data (``fingerprints.index_doc``): run this after ``scripts/gen_fingerprints.py``.
``--check`` writes nothing and exits 1 when the shipped index differs from what the documents give.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loraregistry.architectures import fingerprints  # noqa: E402
from loraregistry.atomic_write import atomic_write  # noqa: E402


def encode(doc: dict) -> bytes:
    """Deterministic bytes: no whitespace, key order as built (paths sorted, as in the documents), gzip without
    mtime or file name."""
    return gzip.compress((json.dumps(doc, separators=(",", ":")) + "\n").encode("utf-8"), compresslevel=9, mtime=0)


def expected_bytes(data_dir: Path) -> bytes:
    return encode(fingerprints.index_doc(fingerprints.read_documents(data_dir)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when the index is stale")
    args = parser.parse_args(argv)
    data_dir = ROOT / "loraregistry" / "architectures" / "data"
    target = data_dir / fingerprints.INDEX_FILE
    expected = expected_bytes(data_dir)
    if args.check:
        stale = not target.is_file() or target.read_bytes() != expected
        print(f"{target}: {'stale, run scripts/gen_fingerprint_index.py' if stale else 'up to date'}")
        return 1 if stale else 0
    with atomic_write(target) as out:
        out.write(expected)
    print(f"wrote {target} ({len(expected)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
