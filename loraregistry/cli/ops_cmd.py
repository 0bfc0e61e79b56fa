"""``lorareg convert`` / ``merge`` / ``resize``: thin commands over ``loraregistry.ops``.

Each parses its options, calls one library function and renders the result (text, or ``--json``).
Every output is verified before it is put in place; ``--force`` keeps an output verify fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from ..ops.errors import about
from .output import emit_json, status

_common = [
    click.option("-o", "--output", required=True, type=click.Path(path_type=Path, readable=False),
                 help="Where to write the result."),
    click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), help="Storage dtype (default: the input's)."),
    click.option("--base", help="Verify the output against this base: architecture id, diffusers folder or checkpoint "
                 "(a folder or checkpoint also gives DoRA modules the base weights they need to become plain LoRA)."),
    click.option("--force", is_flag=True, help="Write the output even when verify finds errors in it."),
    click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout."),
]


def _with_common(func):
    for option in reversed(_common):
        func = option(func)
    return func


def _parse_dialect(pairs: tuple[str, ...]) -> dict[str, str]:
    dialect = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--dialect takes KEY=VALUE, got {pair!r}", hint="e.g. --dialect unet_names=sgm")
        dialect[key.strip()] = value.strip()
    return dialect


def _render(summary: dict[str, Any], lines: list[str], as_json: bool) -> int:
    if as_json:
        emit_json(summary)
    else:
        for line in lines:
            click.echo(line)
    if summary.get("verify_ok") is False:
        status("lorareg: warning: the output has verify errors and was kept because of --force")
    return 0


@click.command()
@click.argument("input", type=click.Path(path_type=Path, readable=False))
@click.option("--to", "to", required=True, type=click.Choice(["kohya", "peft", "diffusers", "bfl"]),
              help="Target format (bfl: SD3/Flux original names as ComfyUI and ai-toolkit write them).")
@click.option("--rank", type=click.IntRange(min=1), help="Rank for LyCORIS/LoCon modules that must become plain LoRA "
              "(peft, diffusers): SVD where the exact rank is higher, the error reported per module. Refused where "
              "no module is lowered (kohya keeps LyCORIS modules; use `lorareg resize`).")
@click.option("--max-error", type=click.FloatRange(min=0), metavar="FRACTION",
              help="Largest relative Frobenius error a lowered module may have (default 0.01); beyond it exit 1 "
                   "and nothing is written, unless --force.")
@click.option("--dialect", multiple=True, metavar="KEY=VALUE", help="Key spelling of the target, e.g. unet_names=sgm.")
@click.option("--dora-to-lora", is_flag=True,
              help="Write DoRA modules as plain LoRA: W' - W from the magnitude, the factors and the base weights "
                   "(needs --base MODEL folder or checkpoint). Exact at rank r + k (k: rows whose norm moved) while "
                   "that is smaller than the dense delta, else SVD to --rank (default: the module's rank) with the "
                   "error per module, held to --max-error. Always done for --to diffusers.")
@_with_common
def convert(input: Path, to: str, rank: int | None, max_error: float | None, dialect: tuple[str, ...],
            dora_to_lora: bool, output: Path, dtype: str | None, base: str | None, force: bool, as_json: bool) -> int:
    """Convert an adapter to kohya, peft, diffusers or BFL-native keys (tensors kept bit for bit where possible)."""
    from ..ops.convert import convert as run

    with about(input):
        result = run(input, output, to=to, dtype=dtype, rank=rank, max_error=max_error,
                     dialect=_parse_dialect(dialect), force=force, base=base, dora_to_lora=dora_to_lora)
    summary = result.summary()
    if result.over_max_error:
        status(f"lorareg: warning: {len(result.over_max_error)} modules changed by more than --max-error "
               f"{result.max_error:g}; written because of --force")
    lines = [f"{input} ({result.format_from}) -> {output} ({to}): {result.modules} modules"]
    if summary["lowered"]:
        lines.append(f"  {summary['lowered']} modules lowered to plain LoRA, {summary['approximate']} approximate "
                     f"(max relative error {summary['max_rel_error']:.2e})")
        lines += [f"  {c['module']}: {c['algorithm']} -> rank {c['rank']}"
                  + ("" if c["exact"] else f", relative error {c['rel_error']:.2e}")
                  for c in summary["changed"] if c["change"] == "lowered"]
    return _render(summary, lines, as_json)


@click.command()
@click.argument("adapters", nargs=-1, required=True, metavar="ADAPTER[:WEIGHT]...")
@click.option("--rank", type=click.IntRange(min=1), help="Reduce every merged module to at most this rank (SVD in "
              "factor space); default: exact merge, ranks add up.")
@click.option("--to", "to", type=click.Choice(["kohya", "peft", "diffusers"]), help="Output format (default: the "
              "first adapter's).")
@click.option("--max-error", type=click.FloatRange(min=0), metavar="FRACTION",
              help="DoRA parents: largest relative Frobenius error a DoRA module may take on as plain LoRA "
                   "(default 0.01); beyond it exit 1 and nothing is written, unless --force.")
@_with_common
def merge(adapters: tuple[str, ...], rank: int | None, to: str | None, max_error: float | None, output: Path,
          dtype: str | None, base: str | None, force: bool, as_json: bool) -> int:
    """Merge adapters with weights (A.safetensors:0.8 B.safetensors:0.5) into one, exactly.

    DoRA parents are written as plain LoRA first (two magnitude vectors have no merged form): that needs the base
    weights, --base MODEL (a diffusers folder or single-file checkpoint); the error of each is reported."""
    from ..ops.merge import MergeInput
    from ..ops.merge import merge as run

    inputs = [MergeInput.parse(text) for text in adapters]
    # A conflict between the parents names them all; errors about one input or the output name that file.
    with about(", ".join(str(i.path) for i in inputs)):
        result = run(inputs, output, rank=rank, to=to, dtype=dtype, force=force, base=base, max_error=max_error)
    summary = result.summary()
    ranks = sorted({m.rank for m in result.modules})
    lines = [f"merged {len(inputs)} adapters -> {output}: {len(result.modules)} modules, rank "
             f"{ranks[0]}..{ranks[-1]}" if ranks else f"merged {len(inputs)} adapters -> {output}: no modules"]
    if rank is not None:
        lines.append(f"  reduced to rank <= {rank}: max relative error {summary['max_rel_error']:.2e}")
    dora = [m for m in result.modules if m.dora_rel_error]
    if dora:
        lines.append(f"  DoRA modules written as plain LoRA: {len(dora)} approximate, max relative error "
                     f"{summary['max_dora_rel_error']:.2e}")
    return _render(summary, lines, as_json)


@click.command()
@click.argument("input", type=click.Path(path_type=Path, readable=False))
@click.option("--rank", type=click.IntRange(min=1), help="New rank (with --dynamic: the largest rank allowed).")
@click.option("--dynamic", metavar="METHOD=VALUE",
              help="kohya's dynamic rank: sv_ratio=X, sv_fro=X or sv_cumulative=X.")
@click.option("--verbose", "-v", is_flag=True, help="One line per module (kept rank, retained Frobenius norm).")
@_with_common
def resize(input: Path, rank: int | None, dynamic: str | None, verbose: bool, output: Path, dtype: str | None,
           base: str | None, force: bool, as_json: bool) -> int:
    """Change an adapter's rank (SVD in factor space; fixed or kohya's dynamic rules).

    \b
    DoRA modules stay DoRA: their direction factors are resized and the magnitude
    vector kept, so each row keeps the norm DoRA gives it, no base weights are
    needed and DoRA loaders still read the file; the error reported is that of
    the direction delta. For plain LoRA first run
    `lorareg convert --dora-to-lora --base MODEL`."""
    from ..ops.resize import ResizeSettings
    from ..ops.resize import resize as run

    settings = ResizeSettings.parse_dynamic(dynamic, rank) if dynamic else ResizeSettings(rank=rank)
    with about(input):
        result = run(input, output, settings, dtype=dtype, force=force, base=base)
    summary = result.summary()
    lines = [f"{input} -> {output}: {summary['modules']} modules, rank {summary['rank_before']} -> "
             f"{summary['rank_after']}; Frobenius norm retained: mean {summary['retained_fro_mean']:.2%}, "
             f"min {summary['retained_fro_min']:.2%}"]
    if summary["capped"]:
        lines.append(f"  {summary['capped']} modules already at or below rank {rank}: kept as they are")
    if verbose:
        lines += [f"  {m.module}: {m.rank_before} -> {m.rank_after}, {m.retained_fro:.2%}" for m in result.modules]
    return _render(summary, lines, as_json)
