"""``lorareg fix IN -o OUT --for TARGET``: rewrite an adapter so the chosen loader loads all of it."""

from __future__ import annotations

from pathlib import Path

import click

from .output import emit_json, status


@click.command()
@click.argument("input", type=click.Path(path_type=Path, readable=False))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, readable=False),
              help="Where to write the fixed adapter (never the input).")
@click.option("--for", "targets", default="all", show_default=True, metavar="TARGET",
              help="diffusers, peft, comfyui, invokeai, a1111, forge, kohya (comma list), or all (diffusers, comfyui, "
                   "invokeai, a1111, forge: one kohya-keyed file).")
@click.option("--rank", type=int, help="Rank for modules that need an SVD (LoHa/LoKr over it, DoRA).")
@click.option("--max-error", type=float, help="Refuse when a module's relative error exceeds this (default 0.01).")
@click.option("--strip-bloat", is_flag=True, help="Drop ss_tag_frequency, cover images and a huge ss_dataset_dirs.")
@click.option("--base", help="Architecture id, or the model folder/checkpoint (needed to convert DoRA).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def fix(input, output, targets, rank, max_error, strip_bloat, base, as_json) -> int:
    """Fix what keeps a loader from loading INPUT: key format, projection shapes, LyCORIS/DoRA modules,
    SD-version metadata. The output is verified for the target before it is written; exit 0 also when
    nothing needs fixing (no output is written then)."""
    from ..fix import fix as fix_file
    from ..ops.errors import about

    with about(input):
        result = fix_file(input, output, targets=targets, rank=rank, max_error=max_error, strip_bloat=strip_bloat,
                          base=base)
    if as_json:
        emit_json(result.summary())
    elif not result.needed:
        status(f"{input}: nothing to fix for {', '.join(result.targets)}; no output written")
    else:
        for change in result.changes:
            status(f"  {change}")
        approx = [m for m in result.modules if m.rel_error > 0]
        if approx:
            status(f"  {len(approx)} modules approximated, max relative error {max(m.rel_error for m in approx):.3g}")
        after = ", ".join(f"{v.consumer} {v.outcome}" for v in result.after)
        status(f"wrote {result.output.path} ({after})")
    return 0
