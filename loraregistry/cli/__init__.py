"""The ``lorareg`` command line: thin commands over the library.

Each command parses options, calls one library function and renders the result (text or ``--json``).
Errors become messages here and nowhere else: one line on stderr, exit 2 for usage and input errors,
1 for a failed check; a traceback only with ``--debug``. Subcommands are imported lazily so that
``lorareg inspect`` never pays for (or imports) torch.
"""

from __future__ import annotations

import sys
import warnings

import click

from .. import __version__
from ..errors import LoraregError
from .lazy import LazyGroup

COMMANDS = {
    "bake": "loraregistry.cli.bake_cmd:bake",
    "civitai": "loraregistry.cli.civitai_cmd:civitai",
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
    "serve": "loraregistry.cli.serve_cmd:serve",
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
    """Run ``lorareg``; every outcome is exit 0 (ok), 1 (a check failed) or 2 (usage or input error) with one
    line on stderr, except an interrupt (130) and a bug of lorareg itself (70, "internal error")."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    _configure_threads(args)  # before torch or numpy start their thread pools
    try:
        with warnings.catch_warnings():
            if not debug:  # numpy's overflow/invalid-value warnings on odd inputs are noise, not messages
                warnings.simplefilter("ignore", RuntimeWarning)
            result = cli.main(args=args, prog_name="lorareg", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        return _usage_error(exc)
    except click.ClickException as exc:  # click.FileError and the like: an input error
        _error_line(exc.format_message())
        return 2
    except click.Abort:
        click.echo("lorareg: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("lorareg: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:
        if debug:
            raise
        error = _as_lorareg_error(exc)
        if error is None:  # a bug: say so plainly, keep the traceback for --debug
            _error_line(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback and "
                        "report it)", prefix="lorareg: ")
            return 70
        _error_line(error.one_line())
        return error.exit_code


def _as_lorareg_error(exc: BaseException) -> LoraregError | None:
    """The one-line error for what a command let through: OS errors (a full disk, a symlink loop, an unreadable
    file), and memory or nesting an absurd input exhausted; None for anything else (a bug)."""
    if isinstance(exc, LoraregError):
        return exc
    from ..ops.errors import InputTooLarge, os_error

    if isinstance(exc, OSError):
        return os_error(exc)
    if isinstance(exc, MemoryError):
        return InputTooLarge("not enough memory to process the input", hint="`lorareg verify` tells what is wrong")
    if isinstance(exc, RecursionError):
        return InputTooLarge("the input is nested too deeply to process", hint="`lorareg verify` tells what is wrong")
    return None


def _error_line(text: str, prefix: str = "lorareg: error: ") -> None:
    from .output import safe_line

    click.echo(prefix + safe_line(text), err=True)


def _usage_error(exc: click.UsageError) -> int:
    """One line saying what is wrong, and one saying where the help is (click prints four)."""
    command = exc.ctx.command_path if exc.ctx is not None else "lorareg"
    _error_line(exc.format_message())
    about_a_file = (isinstance(exc, click.BadParameter) and not isinstance(exc, click.MissingParameter)
                    and isinstance(getattr(exc.param, "type", None), click.Path))
    if not about_a_file:  # a bad file needs no pointer to the help
        click.echo(f"try '{command} --help'", err=True)
    return 2
