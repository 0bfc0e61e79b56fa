"""Every ``lorareg ...`` command a hint suggests runs, and does what the hint says.

Two sources of hints:

* the findings verify prints: well-formed SD1 files in each format, every known-bad adapter and every golden
  are verified (``--target all``, so the loader verdicts' hints come too); each distinct hint is run once, on
  the file that suits it best (``_fit``), on a copy (FILE, OUT and the ``<...>`` placeholders filled by
  ``Run.fill``; a hint that names no file is applied to the file it is about, with what click says the command
  still requires), and the file it wrote is verified again: that finding (code, and loader for LRG6xx) must be
  gone;
* the source: every backticked ``lorareg ...`` in a string the package can print (error hints, help texts
  including the CLI's command docstrings, status lines; other docstrings excluded) must be one of ``COMMANDS``
  below, which says how it is run and checked.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pytest

from loraregistry.cli import cli, main

from .adapters import KNOWN_BAD_ADAPTERS, lora_tensors
from .adapters import write_adapter as write_adapter_kohya

PACKAGE = Path(__file__).resolve().parents[1] / "loraregistry"
GOLDEN = Path(__file__).parent / "golden"
SNIPPET = re.compile(r"`(lorareg [^`]*)`")

# --- hints in the source ----------------------------------------------------------------------------


def _docstring_nodes(tree: ast.AST, *, help_texts: bool) -> set[int]:
    """Docstrings nobody prints; with ``help_texts`` (the CLI modules) function docstrings are click's help."""
    kinds = (ast.Module, ast.ClassDef) if help_texts else (ast.Module, ast.ClassDef, ast.FunctionDef,
                                                           ast.AsyncFunctionDef)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, kinds) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _text(node: ast.AST) -> str | None:
    """A string literal's text; an f-string's with each ``{expression}`` kept as written."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(part.value if isinstance(part, ast.Constant) else "{" + ast.unparse(part.value) + "}"
                       for part in node.values)
    return None


def source_hints() -> dict[str, list[str]]:
    """{backticked `lorareg ...` command: where it is} over every printable string of the package."""
    hints: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _docstring_nodes(tree, help_texts=path.parent.name == "cli")
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                skip.update(id(part) for part in node.values)  # read as part of the f-string
            text = None if id(node) in skip else _text(node)
            for command in SNIPPET.findall(text or ""):
                hints.setdefault(command, []).append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return hints


# --- running a hint ---------------------------------------------------------------------------------

PLACEHOLDERS = {"<words>": "lrgshape", "<field>": "description"}


@dataclass
class Run:
    """One file a hint is about, and where the hint's output goes."""

    file: Path
    out: Path
    architecture: str | None
    format: str | None

    def fill(self, token: str) -> str:
        if token == "FILE":
            return str(self.file)
        if token == "OUT":
            return str(self.out)
        if token == "<id>":
            return self.architecture or "sd1"
        if token == "<format>":  # any format other than the file's own
            return "peft" if self.format == "kohya" else "kohya"
        return PLACEHOLDERS.get(token, token)


def _command(argv: list[str]) -> tuple[click.Command, int]:
    """The command ``argv`` names and how many of its words name it (``meta set`` = 2)."""
    ctx = click.Context(cli)
    command: click.Command = cli
    depth = 0
    for word in argv:
        sub = command.get_command(ctx, word) if isinstance(command, click.Group) else None
        if sub is None:
            break
        command, depth = sub, depth + 1
    return command, depth


def complete(argv: list[str], run: Run) -> list[str]:
    """A hint that names no file means the file it is about: click's parser says what is missing, and the file,
    an output path or a target format (the file's own) is added, until the command line parses."""
    command, depth = _command(argv)
    argv = list(argv)
    for _ in range(4):
        try:
            command.make_context(argv[depth - 1], argv[depth:]).close()
            return argv
        except click.MissingParameter as exc:
            if isinstance(exc.param, click.Argument):
                argv.insert(depth, str(run.file))
            elif exc.param.name == "output":
                argv += ["-o", str(run.out)]
            elif exc.param.name == "to":
                argv += ["--to", run.format if run.format in ("kohya", "peft", "diffusers") else "peft"]
            else:
                raise
    raise AssertionError(f"cannot complete {argv}")


def run_hint(hint: str, run: Run) -> list[str]:
    """Run every command of ``hint`` in order; return the argv lists run."""
    ran = []
    for snippet in SNIPPET.findall(hint):
        argv = [run.fill(token) for token in shlex.split(snippet)[1:]]
        argv = complete(argv, run)
        code = main(argv)
        assert code == 0, f"hint {snippet!r} -> lorareg {shlex.join(argv)} exited {code}"
        ran.append(argv)
    return ran


def verify_json(path: Path, base: str | None) -> dict:
    from click.testing import CliRunner

    argv = ["verify", str(path), "--json", "--target", "all"] + (["--base", base] if base else [])
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)["files"][0]


def _findings(document: dict) -> list[dict]:
    return list(document.get("findings", []))


def _identity(finding: dict) -> str:
    """A finding's code, and for a loader verdict (LRG6xx, message 'comfyui: ...') which loader said it."""
    consumer = finding["message"].split(":", 1)[0] if finding["code"].startswith("LRG6") else ""
    return f"{finding['code']} {consumer}".strip()


def _hints(document: dict) -> list[tuple[str, str]]:
    """(finding identity, hint) of every finding whose hint names a command."""
    return [(_identity(f), f["hint"]) for f in _findings(document) if SNIPPET.search(f.get("hint") or "")]


# Files whose findings carry hints: the known-bad library and the goldens.
def _canonical(tensors: dict) -> dict:
    """kohya {key: array} -> {canonical key: array} through lorareg's own key mapping."""
    from loraregistry.formats import to_canonical

    mapping = to_canonical(list(tensors))
    return {ck: tensors[key] for key, ck in mapping.mapped.items()}


def _written(folder: Path, name: str, tensors: dict, fmt: str, **dialect: str) -> Path:
    from loraregistry.writer import write_adapter

    path = folder / f"{name}.safetensors"
    write_adapter(path, _canonical(tensors), format=fmt, dialect=dialect)
    return path


def _loha(folder: Path) -> Path:
    """A LoHa at real SD1 shapes on the Linear targets (w1_a [out, r], w1_b [r, in], and w2 alike)."""
    rng = np.random.default_rng(3)
    lora = lora_tensors("sd1")
    tensors = {}
    for key, down in lora.items():
        if key.endswith(".lora_down.weight") and down.ndim == 2:
            name = key.removesuffix(".lora_down.weight")
            out_features = lora[f"{name}.lora_up.weight"].shape[0]
            for w in ("w1", "w2"):
                tensors[f"{name}.hada_{w}_a"] = rng.normal(0, 0.05, (out_features, 2)).astype(np.float16)
                tensors[f"{name}.hada_{w}_b"] = rng.normal(0, 0.05, (2, down.shape[1])).astype(np.float16)
            tensors[f"{name}.alpha"] = np.asarray(2.0, dtype=np.float16)
    return write_adapter_kohya(folder / "loha.safetensors", tensors)


def _te1_prefix(folder: Path) -> Path:
    """Real SD1 shapes, the text encoder under ``lora_te1_`` as diffusers' ``convert_state_dict_to_kohya`` writes
    it for SD1 too (SD1 loaders that match the prefix exactly, InvokeAI among them, skip those modules)."""
    tensors = {key.replace("lora_te_", "lora_te1_", 1): array for key, array in lora_tensors("sd1").items()}
    return write_adapter_kohya(folder / "te1.safetensors", tensors)


def _alpha_is_rank(tensors: dict) -> dict:
    """peft/diffusers/attention-processor files keep no alpha tensor: make alpha = rank so nothing is lost."""
    return {key: array for key, array in tensors.items() if not key.endswith(".alpha")}


# Well-formed files at real SD1 shapes first: a hint is tried on the first file that prints it, and a loader
# hint ("fix it for diffusers") is about the file's format, not about a known-bad file's unrelated defect or
# the goldens' tiny shapes (which fit no shipped base, so every verified write refuses them).
FIXTURES: dict[str, tuple[Callable[[Path], Path], str | None]] = {
    "real_sd1_kohya": (lambda folder: write_adapter_kohya(folder / "kohya.safetensors", lora_tensors("sd1")), None),
    "real_sd1_peft": (lambda folder: _written(folder, "peft", _alpha_is_rank(lora_tensors("sd1")), "peft"), None),
    "real_sd1_peft_without_prefix": (lambda folder: _written(
        folder, "bare_peft", _alpha_is_rank(lora_tensors("sd1", components=("unet",))), "peft",
        component_prefix="no", component="unet"), None),
    "real_sd1_loha": (_loha, None),
    "real_sd1_kohya_unet_only": (lambda folder: write_adapter_kohya(
        folder / "unet_only.safetensors", lora_tensors("sd1", components=("unet",))), None),
    "real_sd1_kohya_te1_prefix": (_te1_prefix, None),
    **{bad.name: (bad.build, bad.base) for bad in KNOWN_BAD_ADAPTERS},
    **{p.stem: ((lambda folder, p=p: Path(shutil.copy(p, folder / p.name))), None)
       for p in sorted(GOLDEN.glob("*.safetensors"))},
}


OWN_CODE = {bad.name: bad.code for bad in KNOWN_BAD_ADAPTERS}


def _fit(name: str, identity: str) -> tuple[int, int, int]:
    """How well a fixture suits a hint: a known-bad file built for that very code first, then files checked
    without a --base (a requested base makes loader hints about the wrong base), then the FIXTURES order."""
    build, base = FIXTURES[name]
    return (OWN_CODE.get(name) != identity.split()[0], base is not None, list(FIXTURES).index(name))


@pytest.fixture(scope="module")
def printed_hints(tmp_path_factory) -> dict[tuple[str, str], str]:
    """{(finding identity, hint): the fixture that suits it best} over every fixture that prints it."""
    seen: dict[tuple[str, str], str] = {}
    for name, (build, base) in FIXTURES.items():
        path = build(tmp_path_factory.mktemp(name))
        for identity, hint in _hints(verify_json(path, base)):
            best = seen.get((identity, hint))
            if best is None or _fit(name, identity) < _fit(best, identity):
                seen[(identity, hint)] = name
    return seen


def test_verify_prints_command_hints(printed_hints):
    codes = {code.split()[0] for code, _ in printed_hints}
    # the metadata hints that used to name commands that do not exist
    assert {"LRG500", "LRG502", "LRG503", "LRG506", "LRG507"} <= codes


def test_every_printed_hint_runs_and_clears_its_finding(printed_hints, tmp_path):
    failures = []
    for (code, hint), name in sorted(printed_hints.items()):
        build, base = FIXTURES[name]
        folder = tmp_path / f"{code}-{len(failures)}-{name}"
        folder.mkdir()
        path = build(folder)
        before = verify_json(path, base)
        run = Run(file=path, out=folder / "out.safetensors", architecture=before.get("detected_architecture")
                  or before.get("declared_architecture"), format=before.get("format"))
        try:
            ran = run_hint(hint, run)
        except AssertionError as exc:
            failures.append(f"{name} {code}: {hint!r}: {exc}")
            continue
        written = run.out if any(str(run.out) in argv for argv in ran) else run.file
        if not written.exists():
            failures.append(f"{name} {code}: {hint!r} wrote nothing")
            continue
        after = verify_json(written, base)
        if code in {_identity(f) for f in _findings(after)}:
            failures.append(f"{name} {code}: still reported after {hint!r}")
    assert failures == [], "\n".join(failures)


# --- every command hint in the source --------------------------------------------------------------

FINDING = "finding"  # printed by verify for some fixture: run and checked by the test above


def _written_file(out: Path) -> None:
    assert out.is_file()


def _record_gone(path: Path) -> None:
    from loraregistry.safetensors_io import read_header

    assert "lorareg" not in read_header(path).metadata


@dataclass(frozen=True)
class SourceHint:
    """How a hint that is not (only) a finding's runs: ``argv`` with FILE/OUT/HOME, the exit codes that mean
    "it did what it says", and a check of the result. ``parse_only``: commands that need the network."""

    argv: tuple[str, ...] = ()
    fixture: str = "real_sd1_kohya"
    codes: frozenset[int] = frozenset({0})
    check: Callable[[Path], None] | None = None  # called with the path the command wrote (OUT, else FILE)
    parse_only: bool = False


COMMANDS: dict[str, SourceHint | str] = {
    "lorareg convert": SourceHint(("convert", "FILE", "--to", "peft", "-o", "OUT"), check=_written_file),
    # needs the exact base weights of a DoRA file's model, which no fixture ships: parsed only
    "lorareg convert --dora-to-lora --base MODEL": SourceHint(
        ("convert", "FILE", "--dora-to-lora", "--base", "MODEL", "--to", "kohya", "-o", "OUT"), parse_only=True),
    "lorareg convert FILE --to <format> -o OUT": FINDING,
    "lorareg convert FILE --to peft --dialect component_prefix=yes -o OUT": FINDING,
    "lorareg convert FILE --to peft -o OUT": FINDING,
    "lorareg fix --for a1111": FINDING,
    "lorareg fix --for comfyui": FINDING,
    "lorareg fix --for diffusers": FINDING,
    "lorareg fix --for invokeai": FINDING,
    "lorareg fix --for kohya": FINDING,
    "lorareg fix --for peft": FINDING,
    "lorareg meta import FILE": FINDING,
    "lorareg meta set FILE --base <id>": FINDING,
    "lorareg meta set FILE --license <id>": FINDING,
    "lorareg meta set FILE --trigger-words <words>": FINDING,
    "lorareg meta show {shlex.quote(str(source))} --json": SourceHint(("meta", "show", "FILE", "--json")),
    # printed when the lorareg record itself is over the metadata limit: drop one of its fields
    "lorareg meta unset FILE <field>": SourceHint(("meta", "unset", "FILE", "network.target_modules"),
                                                  fixture="real_sd1_kohya_with_record"),
    "lorareg meta unset FILE lorareg": SourceHint(("meta", "unset", "FILE", "lorareg"),
                                                  fixture="real_sd1_kohya_with_record", check=_record_gone),
    "lorareg meta unset FILE {TAG_FREQUENCY_KEY}": FINDING,
    "lorareg meta unset FILE {shlex.quote(largest)}": FINDING,
    "lorareg pull USER/REPO/FILE.safetensors": SourceHint(("pull", "user/repo/file.safetensors"), parse_only=True),
    "lorareg push": SourceHint(("push", "FILE", "--repo", "user/name"), parse_only=True),
    "lorareg push FILE --repo REPO": SourceHint(("push", "FILE", "--repo", "user/name"), parse_only=True),
    "lorareg registry add FILE": SourceHint(("registry", "add", "FILE")),
    "lorareg registry check": SourceHint(("registry", "check")),
    "lorareg registry scan": SourceHint(("registry", "scan", "IN")),
    "lorareg registry list": SourceHint(("registry", "list")),
    "lorareg registry rebuild": SourceHint(("registry", "rebuild")),
    "lorareg resize": SourceHint(("resize", "FILE", "--rank", "1", "-o", "OUT"), check=_written_file),
    "lorareg schema export": SourceHint(("schema", "export", "-o", "OUT"), check=lambda out: next(out.glob("*.json"))),
    "lorareg serve": SourceHint(("serve",), parse_only=True),  # a server: it runs until stopped
    "lorareg train": SourceHint(("train", "--config", "FILE"), parse_only=True),  # a training run: parsed only
    "lorareg train init": SourceHint(("train", "init", "OUT"), check=_written_file),
    "lorareg verify": SourceHint(("verify", "FILE")),
    "lorareg verify --target": SourceHint(("verify", "FILE", "--target", "all"), codes=frozenset({0, 1})),
    "lorareg verify {adapter}": SourceHint(("verify", "FILE")),
}


def _with_record(folder: Path) -> Path:
    path = write_adapter_kohya(folder / "with_record.safetensors", lora_tensors("sd1"))
    assert main(["meta", "set", str(path), "--license", "cc0-1.0"]) == 0
    return path


FIXTURES["real_sd1_kohya_with_record"] = (_with_record, None)


def test_every_command_hint_in_the_source_has_a_case():
    assert sorted(source_hints()) == sorted(COMMANDS)


def _pattern(template: str) -> re.Pattern[str]:
    """A hint template as written in the source; an f-string's ``{...}`` matches one word of the printed hint."""
    parts = re.split(r"\{[^}]*\}", template)
    return re.compile(r"\S+".join(re.escape(part) for part in parts))


def test_every_finding_hint_in_the_source_is_printed_by_some_fixture(printed_hints):
    printed = {snippet for _, hint in printed_hints for snippet in SNIPPET.findall(hint)}
    unprinted = [t for t, case in COMMANDS.items()
                 if case == FINDING and not any(_pattern(t).fullmatch(p) for p in printed)]
    assert unprinted == []


@pytest.mark.parametrize("template", [t for t, case in COMMANDS.items() if case != FINDING])
def test_source_hint_runs(template, tmp_path, monkeypatch):
    case = COMMANDS[template]
    monkeypatch.setenv("LORAREG_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    build, _ = FIXTURES[case.fixture]
    (tmp_path / "in").mkdir()
    path = build(tmp_path / "in")
    out = tmp_path / "out.safetensors" if {"--to", "--rank"} & set(case.argv) else tmp_path / "out"
    filled = {"FILE": str(path), "OUT": str(out), "IN": str(path.parent)}
    argv = [filled.get(word, word) for word in case.argv]
    command, depth = _command(argv)
    if case.parse_only:
        command.make_context(argv[depth - 1], argv[depth:]).close()  # click raises UsageError if it does not parse
        return
    code = main(argv)
    assert code in case.codes, f"lorareg {shlex.join(argv)} exited {code}"
    if case.check is not None:
        case.check(out if "OUT" in case.argv else path)
