"""The ``lorareg`` command line: thin commands over the library.

Each command parses options, calls one library function and renders the result (text or ``--json``).
Errors become messages here and nowhere else: one line on stderr, exit 2 for usage and input errors,
1 for a failed check; a traceback only with ``--debug``. Subcommands are imported lazily so that
``lorareg inspect`` never pays for (or imports) torch.

The click group lives in ``group.py`` (``cli`` here is it, loaded on first use). The plain forms of
``lorareg verify`` skip click altogether (``fast_args.py``): importing click costs about a sixth of a
header-level verify. Everything else, help and every malformed line included, goes through click.
"""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING, Any

from ..errors import LoraregError
from .output import echo

if TYPE_CHECKING:
    import click

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

# Commands whose work is numeric (torch / BLAS): they choose their thread count before either loads
# (threads.py); header-level commands skip the short idle-core sample.
NUMERIC_COMMANDS = frozenset({"train", "convert", "merge", "resize", "bake", "extract", "fix", "demo"})

# Off: every command line goes through click (the tests compare both ways).
FAST_PATHS = True
# click's shell-completion switch for prog_name "lorareg": when set, click answers instead of running anything.
_COMPLETION_VARIABLE = "_LORAREG_COMPLETE"


def __getattr__(name: str) -> Any:
    if name == "cli":  # the click group, imported only where click runs
        from .group import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
            result = _run_fast(args)
            if result is None:
                result = _run_click(args)
            elif argv is None:  # lorareg's own process (the console script), about to exit
                import gc

                # The interpreter's exit runs one full collection over every object still alive (fingerprint
                # tables, imported modules): ~9 ms of a header-level verify, collecting nothing a verify needs
                # closed (its outputs are written and closed by now). Frozen objects are left out of it; they are
                # still freed by reference counting as the modules are cleared.
                gc.freeze()
        return result if isinstance(result, int) else 0
    except KeyboardInterrupt:
        echo("lorareg: interrupted", err=True)
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


def _run_fast(args: list[str]) -> int | None:
    """The verify command in its plain forms, without click; None when click is to parse the line.

    Around the command it does what click's main does around one (standalone_mode off), so that both ways end
    alike: an interrupt or end of input is an abort (a blank line, then "aborted"), a broken pipe exits 1."""
    import os

    if not FAST_PATHS or os.environ.get(_COMPLETION_VARIABLE):
        return None
    from .fast_args import parse_verify

    try:
        try:
            params = parse_verify(args)
            if params is None:
                return None
            import gc

            # A verify run allocates many small objects that live until it ends (headers, keys, findings): at
            # the default threshold (700) the collector runs dozens of times and frees nothing, ~10% of a
            # header-level run. Young collections every 50,000 allocations still bound what a cycle could hold.
            thresholds = gc.get_threshold()
            gc.set_threshold(50_000, 50, 50)
            try:
                from .verify_run import run_verify

                return run_verify(**params)
            finally:  # main() called in a longer-lived process (tests, notebooks) leaves its collector as it was
                gc.set_threshold(*thresholds)
        except OSError as exc:
            import errno

            if exc.errno != errno.EPIPE:
                raise
            from .output import quiet_broken_pipe

            quiet_broken_pipe()
            sys.exit(1)
    except (EOFError, KeyboardInterrupt):
        echo("", err=True)  # the blank line closes the terminal's ^C echo
        return _aborted()


def _run_click(args: list[str]) -> int:
    """The command line through click; click's own exceptions become lorareg's one-line messages here."""
    import click

    from .group import cli

    try:
        return cli.main(args=args, prog_name="lorareg", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        return _usage_error(exc)
    except click.ClickException as exc:  # click.FileError and the like: an input error
        _error_line(exc.format_message())
        return 2
    except click.Abort:
        return _aborted()


def _aborted() -> int:
    echo("lorareg: aborted", err=True)
    return 130


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

    echo(prefix + safe_line(text), err=True)


def _usage_error(exc: click.UsageError) -> int:
    """One line saying what is wrong, and one saying where the help is (click prints four)."""
    import click

    command = exc.ctx.command_path if exc.ctx is not None else "lorareg"
    _error_line(exc.format_message())
    about_a_file = (isinstance(exc, click.BadParameter) and not isinstance(exc, click.MissingParameter)
                    and isinstance(getattr(exc.param, "type", None), click.Path))
    if not about_a_file:  # a bad file needs no pointer to the help
        echo(f"try '{command} --help'", err=True)
    return 2
