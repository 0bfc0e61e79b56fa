"""The ``lorareg`` command line: thin commands over the library.

Each command parses options, calls one library function and renders the result (text or ``--json``).
Errors become messages here and nowhere else: one line on stderr, exit 2 for usage and input errors,
1 for a failed check; a traceback only with ``--debug``. Subcommands are imported lazily so that
``lorareg inspect`` never pays for (or imports) torch.
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import LoraregError
from .lazy import LazyGroup

COMMANDS = {
    "bake": "loraregistry.cli.bake_cmd:bake",
    "convert": "loraregistry.cli.ops_cmd:convert",
    "demo": "loraregistry.cli.demo_cmd:demo",
    "extract": "loraregistry.cli.bake_cmd:extract",
    "fix": "loraregistry.cli.fix_cmd:fix",
    "inspect": "loraregistry.cli.inspect_cmd:inspect",
    "merge": "loraregistry.cli.ops_cmd:merge",
    "meta": "loraregistry.cli.meta_cmd:meta",
    "pull": "loraregistry.cli.hub_cmd:pull",
    "push": "loraregistry.cli.hub_cmd:push",
    "registry": "loraregistry.cli.registry_cmd:registry",
    "resize": "loraregistry.cli.ops_cmd:resize",
    "schema": "loraregistry.cli.schema_cmd:schema",
    "search": "loraregistry.cli.hub_cmd:search",
    "train": "loraregistry.cli.train_cmd:train",
    "verify": "loraregistry.cli.verify_cmd:verify",
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lorareg")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--threads", type=click.IntRange(min=1), metavar="N",
              help="CPU threads for torch and BLAS (default: OMP_NUM_THREADS, else the cores idle right now).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, threads: int | None) -> None:
    """Verify, inspect, convert and share Stable Diffusion LoRA adapters."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# Commands whose work is numeric (torch / BLAS): they choose their thread count before either loads
# (threads.py); header-level commands skip the short idle-core sample.
NUMERIC_COMMANDS = frozenset({"train", "convert", "merge", "resize", "bake", "extract", "fix", "demo"})


def _configure_threads(args: list[str]) -> None:
    from .. import threads

    requested = threads.requested_in(args)
    command = next((a for a in args if not a.startswith("-") and a in COMMANDS), None)
    if requested is not None or command in NUMERIC_COMMANDS:
        threads.configure(requested)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    _configure_threads(args)
    try:
        result = cli.main(args=args, prog_name="lorareg", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except LoraregError as exc:
        if debug:
            raise
        click.echo(f"lorareg: error: {exc.one_line()}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("lorareg: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("lorareg: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug: say so plainly, keep the traceback for --debug
        if debug:
            raise
        click.echo(f"lorareg: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback "
                   "and report it)", err=True)
        return 70
