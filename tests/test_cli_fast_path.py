"""``lorareg verify`` without click (cli/fast_args.py) parses and ends exactly as it does through click.

(a) every command line in ``LINES``: the fast parser either leaves it to click or returns what click's command
would receive; (b) its option table is the click command's; (c) whole runs end alike both ways (stdout, stderr,
exit code, the JUnit file) for good, failing, missing and unreadable files, every output format, an interrupt
and a broken pipe; (d) a header-level ``--json`` run imports no click (the rest of that import set is checked in
tests/test_import_layers.py).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

import loraregistry.cli as cli_module
from loraregistry.cli import cli, main
from loraregistry.cli.fast_args import OPTIONS, parse_verify
from loraregistry.cli.verify_cmd import verify
from loraregistry.errors import LoraregError
from tests.adapters import KNOWN_BAD_ADAPTERS, lora_tensors, write_adapter

ROOT = Path(__file__).resolve().parents[1]

# (argument list after `lorareg`, whether the fast parser takes it). FILE: a file that exists; DIR: a folder;
# NEW: a path that does not exist yet.
LINES = [
    (["verify", "FILE"], True),
    (["verify", "--no-tensors", "--json", "FILE"], True),
    (["verify", "FILE", "--strict", "-q", "--no-tensors"], True),  # options after the paths
    (["verify", "--quiet", "--quiet", "FILE"], True),  # a flag given twice
    (["verify", "--base", "sd1", "FILE"], True),
    (["verify", "--base=sd1", "FILE"], True),
    (["verify", "--base=", "FILE"], True),  # an empty value
    (["verify", "--base=a=b", "FILE"], True),  # only the first "=" splits
    (["verify", "--base", "--strict", "FILE"], True),  # a value that looks like an option is still the value
    (["verify", "--base", "sd1", "--base", "sdxl", "FILE"], True),  # the last one wins
    (["verify", "--format", "github", "FILE"], True),
    (["verify", "--format=json", "--json", "FILE"], True),
    (["verify", "--junit", "NEW", "FILE"], True),
    (["verify", "--junit=FILE", "FILE"], True),  # an existing file is overwritten
    (["verify", "--target", "diffusers,comfyui", "FILE"], True),
    (["verify", "--target", "peft", "--target", "all", "FILE"], True),  # repeated: the last one wins
    (["verify", "--target=", "FILE"], True),  # empty: no targets
    (["verify", "--target", "Diffusers, peft,", "FILE"], True),
    (["verify", "--", "-x"], True),  # a path named like an option
    (["verify", "FILE", "--", "--json", "-q"], True),
    (["verify", "-", "FILE"], True),  # "-" alone is a path
    (["verify", "", "FILE"], True),
    (["verify", "FILE", "DIR", "FILE"], True),
    (["verify"], False),  # no path
    (["verify", "--json"], False),
    (["verify", "--"], False),
    (["verify", "--help"], False),
    (["verify", "-h", "FILE"], False),
    (["verify", "-qh", "FILE"], False),  # a bundle of short flags
    (["verify", "-qq", "FILE"], False),
    (["verify", "-q=1", "FILE"], False),
    (["verify", "--strict=yes", "FILE"], False),  # a value for a flag
    (["verify", "--json=", "FILE"], False),
    (["verify", "--format", "xml", "FILE"], False),  # a choice click refuses
    (["verify", "--format", "JSON", "FILE"], False),
    (["verify", "--format=", "FILE"], False),
    (["verify", "FILE", "--base"], False),  # a missing value
    (["verify", "FILE", "--junit"], False),
    (["verify", "--junit", "DIR", "FILE"], False),  # click: "is a directory"
    (["verify", "--nope", "FILE"], False),  # unknown options
    (["verify", "-x", "FILE"], False),
    (["verify", "--jso", "FILE"], False),  # click matches no prefixes
    (["verify", "--debug", "FILE"], False),
    (["verify", "--threads", "2", "FILE"], False),
    (["verify", "---json", "FILE"], False),
    (["--debug", "verify", "FILE"], False),  # global options go to click
    (["--threads", "1", "verify", "FILE"], False),
    (["inspect", "FILE"], False),  # other commands too
    (["Verify", "FILE"], False),
    ([], False),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("fast")
    good = write_adapter(folder / "good.safetensors", lora_tensors("sd1", rank=2, seed=1),
                         {"modelspec.trigger_phrase": "sks", "modelspec.license": "mit"})
    (folder / "dir").mkdir()
    return {"FILE": str(good), "DIR": str(folder / "dir"), "NEW": str(folder / "new.xml")}


def _fill(argv: list[str], places: dict[str, str]) -> list[str]:
    def one(arg: str) -> str:
        name, eq, value = arg.partition("=")
        if eq and value in places:
            return f"{name}={places[value]}"
        return places.get(arg, arg)

    return [one(arg) for arg in argv]


def _click_params(argv: list[str]) -> dict:
    """What click's ``verify`` command receives for ``lorareg ARGV`` (``argv[0] == "verify"``)."""
    parent = click.Context(cli, info_name="lorareg", **cli.context_settings)
    return verify.make_context("verify", list(argv[1:]), parent=parent).params


@pytest.mark.parametrize(("argv", "fast"), LINES, ids=[" ".join(a) or "(none)" for a, _ in LINES])
def test_the_fast_parser_reads_a_line_as_click_does_or_leaves_it(argv, fast, places):
    argv = _fill(argv, places)
    params = parse_verify(argv)
    assert (params is not None) == fast
    if params is not None:
        assert params == _click_params(argv)


def test_arguments_that_are_not_strings_are_left_to_click(places):
    assert parse_verify(["verify", Path(places["FILE"])]) is None


@pytest.mark.parametrize("target", ["nope", "diffusers,nope", ",", " "])
def test_a_bad_target_is_the_same_error_both_ways(target, places):
    argv = ["verify", "--target", target, places["FILE"]]
    with pytest.raises(LoraregError) as fast:
        parse_verify(argv)
    with pytest.raises(LoraregError) as slow:
        _click_params(argv)
    assert (type(fast.value), fast.value.one_line()) == (type(slow.value), slow.value.one_line())


def test_the_option_table_is_the_click_commands():
    """Names, flags, choices, repetition; the defaults are compared in LINES' first line (click 8.3 keeps them
    as a sentinel until parsing)."""
    def row(dest, names, is_flag, choices, multiple):
        return dest, tuple(names), is_flag, tuple(choices) if choices else None, multiple

    ours = sorted(row(o.dest, o.names, o.is_flag, o.choices, False) for o in OPTIONS)
    options = [p for p in verify.params if isinstance(p, click.Option)]
    theirs = sorted(row(p.name, [*p.opts, *p.secondary_opts], p.is_flag, getattr(p.type, "choices", None),
                        p.multiple) for p in options)
    assert ours == theirs
    assert not any(p.envvar or p.is_eager or p.count or p.secondary_opts for p in options)
    [paths] = [p for p in verify.params if isinstance(p, click.Argument)]
    assert (paths.name, paths.nargs, paths.required) == ("paths", -1, True)  # parse_verify needs one path at least


# --- whole runs, through the fast path and through click ------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("runs")
    good = write_adapter(folder / "good.safetensors", lora_tensors("sd1", rank=2, seed=1),
                         {"modelspec.trigger_phrase": "sks", "modelspec.license": "mit"})
    warned = write_adapter(folder / "warned.safetensors", lora_tensors("sd1", rank=2, seed=2))  # no license...
    bad = {b.name: b for b in KNOWN_BAD_ADAPTERS}
    nan = bad["nan_in_up"].build(folder)
    alien = bad["unknown_format_not_a_lora"].build(folder)
    loop = folder / "loop.safetensors"
    os.symlink(folder / "other_end", loop)
    os.symlink(loop, folder / "other_end")
    garbage = folder / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 40)
    odd = folder / "odd \x1b[31mname\u202e.safetensors"  # a name that must come out escaped
    odd.write_bytes(good.read_bytes())
    return {"good": good, "warned": warned, "nan": nan, "alien": alien, "loop": loop, "garbage": garbage,
            "odd": odd, "missing": folder / "missing.safetensors", "folder": folder}


RUNS = [
    ["verify", "good"],
    ["verify", "--no-tensors", "--json", "good"],
    ["verify", "--json", "nan"],
    ["verify", "nan"],
    ["verify", "-q", "good", "nan", "warned"],
    ["verify", "--strict", "warned"],
    ["verify", "--strict", "--json", "warned"],
    ["verify", "--format", "github", "nan", "warned", "alien"],
    ["verify", "--format=github", "--strict", "warned"],
    ["verify", "--junit", "JUNIT", "good", "nan"],
    ["verify", "--json", "--junit=JUNIT", "--strict", "warned"],
    ["verify", "missing"],
    ["verify", "--json", "missing"],
    ["verify", "loop"],  # unreadable: a symlink loop
    ["verify", "garbage"],
    ["verify", "--json", "good", "missing", "loop", "garbage"],
    ["verify", "odd"],
    ["verify", "--format", "github", "odd", "nan"],
    ["verify", "--json", "odd"],
    ["verify", "--base", "sdxl-base", "good"],
    ["verify", "--base", "no-such-base", "good"],
    ["verify", "--target", "all", "--no-tensors", "good"],
    ["verify", "--target", "diffusers,bogus", "good"],
    ["verify", "--target", "comfyui", "--strict", "--json", "alien"],
    ["verify", "--no-tensors", "folder"],
    ["verify", "--json", "--", "good"],
]


def _argv(template: list[str], files: dict[str, Path], junit: Path) -> list[str]:
    names = {**{k: str(v) for k, v in files.items()}, "JUNIT": str(junit)}
    return [f"{a.split('=')[0]}={names[a.split('=')[1]]}" if "=" in a and a.split("=")[1] in names
            else names.get(a, a) for a in template]


def _outcome(argv, tmp_path, files, capsys, monkeypatch, *, fast: bool, name: str):
    """(exit code, stdout, stderr, JUnit XML) of one run, the fast path on or off; checks which way it ran."""
    ran_click = []
    real = cli_module._run_click
    monkeypatch.setattr(cli_module, "FAST_PATHS", fast)
    monkeypatch.setattr(cli_module, "_run_click", lambda args: ran_click.append(1) or real(args))
    junit = tmp_path / f"{name}.xml"
    code = main(_argv(argv, files, junit))
    out, err = capsys.readouterr()
    assert bool(ran_click) is not fast
    return code, out, err.replace(str(junit), "JUNIT"), junit.read_text() if junit.exists() else None


@pytest.mark.parametrize("argv", RUNS, ids=[" ".join(a) for a in RUNS])
def test_a_run_ends_alike_with_and_without_click(argv, files, tmp_path, capsys, monkeypatch):
    fast = _outcome(argv, tmp_path, files, capsys, monkeypatch, fast=True, name="fast")
    slow = _outcome(argv, tmp_path, files, capsys, monkeypatch, fast=False, name="slow")
    assert fast == slow
    assert fast[0] in (0, 1, 2)
    assert "Traceback" not in fast[2] and "internal error" not in fast[2]


@pytest.mark.parametrize("argv", [["verify", "--json", "good"], ["verify", "missing"]])
def test_a_fast_run_leaves_the_collector_as_it_found_it(argv, files, tmp_path, capsys):
    import gc

    before = gc.get_threshold()
    seen = []
    real = gc.set_threshold
    try:
        gc.set_threshold = lambda *t: seen.append(t) or real(*t)  # the run raises it while it works
        main(_argv(argv, files, tmp_path / "j.xml"))
    finally:
        gc.set_threshold = real
    capsys.readouterr()
    assert seen and seen[0][0] > before[0]
    assert gc.get_threshold() == before


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, EOFError])
def test_an_interrupt_ends_alike(interrupt, files, tmp_path, capsys, monkeypatch):
    import loraregistry.cli.verify_run as verify_run

    def interrupted(*args, **kwargs):
        raise interrupt

    monkeypatch.setattr(verify_run, "verify_one", interrupted)
    fast = _outcome(["verify", "good"], tmp_path, files, capsys, monkeypatch, fast=True, name="fast")
    slow = _outcome(["verify", "good"], tmp_path, files, capsys, monkeypatch, fast=False, name="slow")
    assert fast == slow == (130, "", "\nlorareg: aborted\n", None)


_INTO_A_CLOSED_PIPE = """
import atexit, sys
original = sys.stdout
atexit.register(lambda: sys.stderr.write("stdout wrapped" if sys.stdout is not original else "stdout as it was"))
import loraregistry.cli as cli
cli.FAST_PATHS = sys.argv[1] == "fast"
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("fmt", ["json", "github", "text"])
def test_a_broken_pipe_ends_alike(fmt, files):
    def run(way: str) -> tuple[int, str]:
        read, write = os.pipe()
        os.close(read)  # nobody reads: the first write breaks the pipe
        with os.fdopen(write, "wb") as stdout:
            done = subprocess.run([sys.executable, "-c", _INTO_A_CLOSED_PIPE, way, "verify", "--format", fmt,
                                   str(files["nan"])], stdout=stdout, stderr=subprocess.PIPE, text=True,
                                  cwd=ROOT, env={**os.environ, "NO_COLOR": "1"})
        return done.returncode, done.stderr

    fast = run("fast")
    assert fast == run("click")
    # exit 1 and no complaint when Python flushes at exit: click wraps stdout for that, rich points it at devnull
    assert fast == (1, "stdout as it was" if fmt == "text" else "stdout wrapped")


@pytest.mark.parametrize("args", [["--json"], ["--format=github"], ["-q", "--strict"]])
def test_a_header_level_run_imports_neither_click_nor_rich(args, files):
    """--json and github print plain text; -q with every file passing prints only the summary line."""
    probe = ("import json, sys\nfrom loraregistry.cli import main\ncode = main(sys.argv[1:])\n"
             "sys.stderr.write(json.dumps([code, sorted(sys.modules)]))\n")
    done = subprocess.run([sys.executable, "-c", probe, "verify", "--no-tensors", *args, str(files["good"]),
                           str(files["odd"])], capture_output=True, text=True, cwd=ROOT)
    code, modules = json.loads(done.stderr.splitlines()[-1])  # github: the summary line comes first
    assert code == 0 and (done.stdout or "--format=github" in args)  # clean files: no annotation
    assert [m for m in modules if m.split(".")[0] in ("click", "rich")] == []


# --- the summary line without rich ----------------------------------------------------------------------------

SUMMARIES = ["100 file(s): 100 passed, 0 failed (0 errors, 0 warnings, 0 notes)",
             "1 file(s): 0 passed, 1 failed (3 errors, 12 warnings, 1 notes)", ""]
# Lines print_line must leave to rich: markup, an emoji code, escapes, non-ASCII, controls.
FOR_RICH = ["[bold]1[/bold] file(s)", "a :smile: b", "x \\[y]", "café", "a\tb", "\x1b[31mred"]

_PRINT_BOTH_WAYS = """
import sys
from loraregistry.cli.output import console, print_line
for text in sys.argv[2:]:
    (print_line if sys.argv[1] == "plain" else lambda t: console().print(t))(text)
"""


@pytest.mark.parametrize("text", SUMMARIES + FOR_RICH)
def test_print_line_writes_what_rich_writes(text, capsys):
    from loraregistry.cli.output import console, print_line

    print_line(text)
    plain = capsys.readouterr()
    console().print(text)
    assert plain == capsys.readouterr()


@pytest.mark.parametrize("env", [{}, {"FORCE_COLOR": "1"}, {"NO_COLOR": "1"}, {"TERM": "dumb"},
                                 {"TERM": "xterm-256color", "COLORTERM": "truecolor"}])
def test_print_line_writes_what_rich_writes_on_a_terminal(env):
    import pty
    import select

    def on_a_terminal(way: str) -> bytes:
        controller, terminal = pty.openpty()
        base = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLORTERM")}
        done = subprocess.run([sys.executable, "-c", _PRINT_BOTH_WAYS, way, *SUMMARIES], stdout=terminal,
                              stderr=subprocess.PIPE, cwd=ROOT, env={**base, **env})
        os.close(terminal)
        assert done.returncode == 0, done.stderr
        data = b""
        while select.select([controller], [], [], 0.5)[0]:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal side is closed: all read
                break
            if not chunk:
                break
            data += chunk
        os.close(controller)
        return data

    plain = on_a_terminal("plain")
    assert plain == on_a_terminal("rich")
    assert plain.count(b"passed") == 2


def test_print_line_meets_a_broken_pipe_as_rich_does():
    def run(way: str) -> tuple[int, str]:
        read, write = os.pipe()
        os.close(read)
        with os.fdopen(write, "wb") as stdout:
            done = subprocess.run([sys.executable, "-c", _PRINT_BOTH_WAYS, way, SUMMARIES[0]], stdout=stdout,
                                  stderr=subprocess.PIPE, text=True, cwd=ROOT)
        return done.returncode, done.stderr

    assert run("plain") == run("rich") == (1, "")


# --- echo: click.echo's output without click -------------------------------------------------------------------

ECHO_TEXTS = ["plain", "", "two\nlines", "café ünïcode ✓", "\x1b[31mred\x1b[0m and \x1b]8;;x\x07", "tab\there\r"]


def _streams():
    """Fresh streams of the kinds a CLI writes to: UTF-8 and Latin-1 files, an ASCII one (click re-wraps it as
    UTF-8), a StringIO (no encoding at all)."""
    return {"utf-8": io.TextIOWrapper(io.BytesIO(), encoding="utf-8"),
            "latin-1": io.TextIOWrapper(io.BytesIO(), encoding="latin-1", errors="replace"),
            "ascii": io.TextIOWrapper(io.BytesIO(), encoding="ascii"),
            "stringio": io.StringIO()}


def _written(stream) -> object:
    if isinstance(stream, io.StringIO):
        return stream.getvalue()
    stream.flush()
    return stream.buffer.getvalue()


@pytest.mark.parametrize("err", [False, True])
@pytest.mark.parametrize("nl", [True, False])
@pytest.mark.parametrize("text", ECHO_TEXTS)
def test_echo_writes_what_click_echo_writes(text, nl, err, monkeypatch):
    from loraregistry.cli.output import echo

    written = {}
    for name, writer in (("ours", lambda: echo(text, err=err, nl=nl)),
                         ("click", lambda: click.echo(text, err=err, nl=nl))):
        streams = _streams()
        for kind, stream in streams.items():
            monkeypatch.setattr(sys, "stderr" if err else "stdout", stream)
            try:
                writer()
                outcome = _written(stream)
            except Exception as exc:  # the same failure both ways counts as the same
                outcome = (type(exc), str(exc))
            written[name, kind] = outcome
    assert {k: v for (w, k), v in written.items() if w == "ours"} == \
           {k: v for (w, k), v in written.items() if w == "click"}
