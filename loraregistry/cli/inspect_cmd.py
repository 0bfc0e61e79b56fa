"""``lorareg inspect FILE...``: what an adapter is, from its header."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import LoraregError
from .output import cell, console, emit_json, status


def _fmt_counts(counts: dict[str, int], limit: int = 6) -> str:
    items = [f"{k} x{v}" for k, v in counts.items()]
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more if items else "-"


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _render(report: dict[str, Any]) -> None:
    from rich.table import Table

    out = console()
    table = Table(title=cell(report["path"]), show_header=False, box=None, title_justify="left", pad_edge=False)
    table.add_column(style="bold")
    table.add_column()

    def add_row(name: object, value: object) -> None:  # every cell literal: values come from the file
        table.add_row(cell(name), cell(value))

    fmt = report["format"] + (f" ({', '.join(f'{k}={v}' for k, v in report['dialect'].items())})"
                              if report["dialect"] else "")
    add_row("format", fmt)
    add_row("network", report["network_type"])
    add_row("components", _fmt_counts(report["components"]))
    add_row("modules", f"{report['module_count']} ({report['conv_module_count']} conv)")
    add_row("rank", _fmt_counts(report["ranks"]))
    add_row("alpha", _fmt_counts(report["alphas"]) if report["alphas"] else "not stored (alpha = rank)")
    add_row("dtypes", _fmt_counts(report["dtypes"]))
    add_row("size", f"{_size(report['file_size'])} (header {_size(report['header_size'])}, "
                    f"{report['tensor_count']} tensors)")
    if report["unknown_keys"]:
        add_row("unknown keys", f"{len(report['unknown_keys'])}: {', '.join(report['unknown_keys'][:3])}"
                + (" ..." if len(report["unknown_keys"]) > 3 else ""))
    for name, value in (report.get("hashes") or {}).items():
        if value:
            add_row(name, value)
    add_row("metadata from", ", ".join(report["metadata_sources"]) or "nothing (inferred from weights)")
    inferred = set(report["inferred"])
    for field, value in _flatten(report["metadata"]):
        mark = " (inferred)" if field in inferred else ""
        add_row(f"  {field}", f"{value}{mark}")
    for warning in report["warnings"]:
        add_row("warning", warning)
    out.print(table)


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(_flatten(value, name + "."))
        elif value not in ({}, [], None, ""):
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            rows.append((name, text if len(text) <= 100 else text[:97] + "..."))
    return rows


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per file (see README).")
@click.option("--no-hashes", is_flag=True, help="Skip the hashes (they read the whole file).")
def inspect(files: tuple[Path, ...], as_json: bool, no_hashes: bool) -> int:
    """Show format, components, rank/alpha, dtypes, hashes and normalized metadata of adapters."""
    from ..inspection import inspect_adapter
    from ..ops.errors import about

    reports: list[dict[str, Any]] = []
    failed = 0
    for path in files:
        try:
            with about(path):  # OS errors, exhausted memory or nesting: one line naming this file
                reports.append(inspect_adapter(path, hashes=not no_hashes))
        except LoraregError as exc:
            failed += 1
            if len(files) == 1:
                raise
            reports.append({"path": str(path), "error": exc.one_line()})
            if not as_json:
                status(f"lorareg: error: {exc.one_line()}")
    if as_json:
        emit_json(reports)
    else:
        for report in reports:
            if "error" not in report:
                _render(report)
    return 2 if failed else 0
