"""``lorareg bake`` / ``extract``: adapters into base weights, and a LoRA out of two checkpoints."""

from __future__ import annotations

from pathlib import Path

import click

from .output import emit_json, status

_path = click.Path(path_type=Path, readable=False)


@click.command()
@click.argument("adapters", nargs=-1, required=True, metavar="ADAPTER[:WEIGHT]...")
@click.option("--base", required=True, type=_path, help="Single-file .safetensors checkpoint or diffusers folder.")
@click.option("-o", "--output", required=True, type=_path,
              help="Output: a .safetensors file for a single-file base, a new folder for a diffusers folder.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (with the output hashes) on stdout.")
def bake(adapters: tuple[str, ...], base: Path, output: Path, as_json: bool) -> int:
    """Merge adapters into a base model's weights, one tensor at a time."""
    from ..ops.bake import bake as run
    from ..ops.merge import MergeInput

    report = run([MergeInput.parse(text) for text in adapters], base=base, output=output)
    if as_json:
        emit_json(report.as_dict())
        return 0
    click.echo(f"baked {len(report.adapters)} adapters into {report.base} -> {report.output}: "
               f"{report.patched_modules} modules in {report.patched_tensors} tensors patched, "
               f"{report.copied_tensors} copied")
    for item in report.adapters:
        click.echo(f"  {item['path']} x {item['weight']:g} ({item['modules']} modules)")
    for f in report.files:
        click.echo(f"{f['path']}\n  sha256 {f['sha256']}\n  AutoV2 {f['autov2'].upper()}\n  "
                   f"AutoV3 {f['autov3'][:12].upper()} ({f['autov3']})")
    return 0


@click.command()
@click.option("--base", required=True, type=_path, help="The base checkpoint (file or diffusers folder).")
@click.option("--tuned", required=True, type=_path, help="The fine-tuned checkpoint, same layout as --base.")
@click.option("--rank", required=True, type=click.IntRange(min=1), help="Rank of Linear and 1x1-conv modules.")
@click.option("--conv-rank", type=click.IntRange(min=1),
              help="Also extract ResNet/sampler convs at this rank (LoCon); default: attention and MLP only.")
@click.option("-o", "--output", required=True, type=_path, help="The adapter to write (.safetensors).")
@click.option("--to", "to", type=click.Choice(["kohya", "peft"]), default="kohya", show_default=True,
              help="Key format of the adapter.")
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), default="fp16", show_default=True,
              help="Storage dtype of the factors.")
@click.option("--arch", "architecture", help="Base architecture id to record (default: detected from the shapes).")
@click.option("--min-diff", type=click.FloatRange(min=0), default=1e-6, show_default=True,
              help="Skip modules whose difference norm is below this fraction of the base weight's norm.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the randomized SVD (large modules).")
@click.option("--force", is_flag=True, help="Write the output even when verify finds errors in it.")
@click.option("--verbose", "-v", is_flag=True, help="One line per module (rank, energy kept, method).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (per-module energy) on stdout.")
def extract(base: Path, tuned: Path, rank: int, conv_rank: int | None, output: Path, to: str, dtype: str,
            architecture: str | None, min_diff: float, seed: int, force: bool, verbose: bool, as_json: bool) -> int:
    """Extract a LoRA from the difference of two checkpoints (truncated SVD per module)."""
    from ..ops.extract import extract as run

    report = run(base=base, tuned=tuned, output=output, rank=rank, conv_rank=conv_rank, to=to, dtype=dtype,
                 min_diff=min_diff, seed=seed, architecture=architecture, force=force)
    if as_json:
        emit_json(report.as_dict())
    else:
        energies = [m.energy for m in report.modules]
        click.echo(f"{report.output}: {len(report.modules)} modules ({to}, rank {rank}"
                   + (f", conv rank {conv_rank}" if conv_rank else "") + f"), architecture "
                   f"{report.architecture or 'not detected'}; energy kept: mean {sum(energies) / len(energies):.4%}, "
                   f"min {min(energies):.4%}")
        if report.skipped:
            click.echo(f"  {len(report.skipped)} modules skipped (no difference), e.g. {report.skipped[0]}")
        if verbose:
            for m in report.modules:
                click.echo(f"  {m.module}: rank {m.rank}, energy {m.energy:.4%} ({m.method})")
        click.echo(f"  sha256 {report.sha256}\n  AutoV3 {report.tensor_sha256}")
    if report.forced:
        status("lorareg: warning: the output has verify errors and was kept because of --force")
    return 0
