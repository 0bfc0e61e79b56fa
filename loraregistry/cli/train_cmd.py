"""``lorareg train --config run.toml [--set k=v ...] [--resume latest|PATH] [--push-to REPO]``, ``lorareg train
init`` and ``lorareg train push RUN --repo REPO`` (a finished run to the Hub, again or for the first time)."""

from __future__ import annotations

from pathlib import Path

import click

from .output import emit_json, status

_COMMON = (  # flag -> dotted field: the settings people change between runs most
    ("base", "model.base"), ("data", "data.folder"), ("output", "output.dir"), ("name", "output.name"),
    ("steps", "train.steps"), ("lr", "optim.lr"), ("rank", "network.rank"), ("seed", "train.seed"),
    ("init_from", "network.init_from"), ("push_to", "output.push_to"), ("push_endpoint", "output.push_endpoint"),
)


@click.group(invoke_without_command=True)
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML config (write one with `lorareg train init`).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Override a config field (TOML value syntax); repeatable.")
@click.option("--resume", metavar="latest|PATH", help="Continue from the newest checkpoint or a checkpoint folder.")
@click.option("--base", help="= --set model.base=...")
@click.option("--data", help="= --set data.folder=...")
@click.option("--output", help="= --set output.dir=...")
@click.option("--name", help="= --set output.name=...")
@click.option("--steps", type=int, help="= --set train.steps=...")
@click.option("--lr", type=float, help="= --set optim.lr=...")
@click.option("--rank", type=int, help="= --set network.rank=...")
@click.option("--seed", type=int, help="= --set train.seed=...")
@click.option("--init-from", "init_from", metavar="ADAPTER",
              help="Continue an existing LoRA file (its modules, ranks, alphas); = --set network.init_from=...")
@click.option("--push-to", "push_to", metavar="USER/NAME",
              help="When training ends, push the verified adapter, samples and loss plot to this Hub repo; "
                   "= --set output.push_to=...")
@click.option("--push-endpoint", "push_endpoint", metavar="URL",
              help="Hub-compatible endpoint for --push-to (default: $HF_ENDPOINT, else https://huggingface.co).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--threads", type=click.IntRange(min=1), metavar="N",
              help="CPU threads (default: OMP_NUM_THREADS, else the cores idle when training starts).")
@click.pass_context
def train(ctx: click.Context, config_path: Path | None, overrides: tuple[str, ...], resume: str | None,
          as_json: bool, quiet: bool, threads: int | None, **flags) -> int | None:
    """Train a LoRA on SD1.x / SD2.x / SDXL; write it verified, with full metadata.

    Multi-GPU: accelerate launch -m loraregistry.train --config run.toml
    """
    if ctx.invoked_subcommand is not None:
        return None
    from ..train.config import TrainConfig, parse_value
    from ..train.errors import ConfigError

    if config_path is None and not flags.get("base"):
        raise click.UsageError("give --config run.toml (see `lorareg train init`), or at least --base and --data")
    settings: dict[str, object] = {}
    for flag, dotted in _COMMON:
        if flags.get(flag) is not None:
            settings[dotted] = flags[flag]
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected SECTION.FIELD=VALUE")
        settings[key.strip()] = parse_value(value.strip())
    config = TrainConfig.load(config_path, settings)
    if config.output.push_to:
        from ..hub import env
        from ..train.push import check_target

        check_target(config)  # a bad repo id fails now, not after training
        env.prepare(config.output.push_endpoint)  # before anything imports huggingface_hub
    from ..train.run import train as run_training

    result = run_training(config, resume=resume, quiet=quiet or as_json)
    if as_json:
        emit_json(result.to_dict())
    else:
        _render(result.to_dict())
    if result.push is not None and result.push.error is not None:  # the outputs are in place: say how to retry
        raise result.push.failure(result.outputs[0].path if result.outputs else None)
    return 0


def _render(summary: dict) -> None:
    first, last = summary["loss_first"], summary["loss_last"]
    status(f"trained {summary['architecture']} LoRA: {summary['steps']} steps in {summary['seconds']} s, "
           f"loss {first:.4f} -> {last:.4f}" if first is not None else "trained")
    skipped = summary["dataset"]["skipped"]
    if skipped:
        status(f"skipped {len(skipped)} dataset items (see run.json): first {skipped[0]['path']}: "
               f"{skipped[0]['reason']}")
    for out in summary["outputs"]:
        note = f" (registry {out['registry_id']})" if out["registry_id"] else ""
        if out["registry_error"]:
            note = f" (not registered: {out['registry_error']})"
        click.echo(f"{out['format']}: {out['path']} verified ok{note}")
    if summary["validation"]:
        first, last = summary["validation"][0], summary["validation"][-1]
        status(f"validation loss on {last['images']} held-out images: {first['loss']:.4f} (step {first['step']}) -> "
               f"{last['loss']:.4f} (step {last['step']})")
    if summary["outputs"]:
        status(f"check again with: lorareg verify {summary['outputs'][0]['path']} --base {summary['verify_base']}")
    push = summary["push"]
    if push and push["ok"]:
        click.echo(f"pushed to {push['repo_id']} at {push['commit'][:12]} ({', '.join(push['files'])})")
        click.echo(push["commit_url"])


@train.command("push")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False, path_type=Path))
@click.option("--repo", "repo_id", required=True, metavar="USER/NAME", help="Repo to push to (created if missing).")
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--base", help="Verify against this base instead of the one the run verified with.")
@click.option("--endpoint", envvar="HF_ENDPOINT", metavar="URL",
              help="Hub-compatible endpoint (default: $HF_ENDPOINT, else https://huggingface.co).")
@click.option("--token", metavar="TOKEN", help="Access token (default: HF_TOKEN or `hf auth login`).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def push(run_dir: Path, repo_id: str, private: bool, base: str | None, endpoint: str | None, token: str | None,
         as_json: bool) -> int:
    """Push a finished training run: its verified adapter, final sample grid and loss plot, with a model card."""
    from ..hub import env

    endpoint = env.prepare(endpoint)
    from ..train.push import push_run

    result = push_run(run_dir, repo_id, endpoint=endpoint, token=token, private=private, base=base)
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(f"pushed {run_dir} to {repo_id} at {result.commit[:12]} ({', '.join(result.files)})")
        click.echo(result.commit_url)
    return 0


@train.command("init")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default=Path("run.toml"))
@click.option("--preset", type=click.Choice(["sd15", "sdxl", "flux", "sd35", "tiny"]), default="sd15", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, preset: str, force: bool) -> None:
    """Write an annotated training config template."""
    from ..train.presets import write_template

    write_template(path, preset, force=force)
    status(f"wrote {path} ({preset} preset); edit it, then: lorareg train --config {path}")
