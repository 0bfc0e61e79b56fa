"""What ``lorareg verify PATH...`` does once its options are read: verify each file, print the outputs, return
the exit code. No click here: the plain command lines reach ``run_verify`` without it (fast_args.py), the others
through the click command in verify_cmd.py.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from ..atomic_write import is_temp_name
from ..errors import FileAccessError, LoraregError
from .output import console, echo, print_line, status

_GLOB_CHARS = set("*?[")


def _hidden(relative: Path) -> bool:
    """Inside a hidden folder (.cache, .git, a run's .work): tools' own files, not adapters to judge."""
    return any(part.startswith(".") for part in relative.parts)


def expand_paths(specs: tuple[str, ...]) -> list[str]:
    """Files as given, folders searched recursively for *.safetensors (hidden folders skipped), globs expanded
    (quoted ones too).
    Remote specs (hf://, http(s)://) pass through."""
    found: list[str] = []
    for spec in specs:
        if spec.startswith(("hf://", "http://", "https://")):
            found.append(spec)
        elif os.path.isdir(spec):
            files = sorted(str(p) for p in Path(spec).rglob("*.safetensors")
                           if p.is_file() and not is_temp_name(p.name)  # a killed writer's leftover
                           and not _hidden(p.relative_to(spec).parent))
            if not files:
                raise FileAccessError("no .safetensors files in this folder", path=spec,
                                      hint="name adapter files, or a folder that holds some")
            found.extend(files)
        elif _GLOB_CHARS & set(spec) and not os.path.exists(spec):
            files = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not files:
                raise FileAccessError("the pattern matches no files", path=spec)
            found.extend(files)
        else:
            found.append(spec)
    return list(dict.fromkeys(found))  # once each, in order


def verify_one(spec: str, base: str | None, tensors: bool, targets, *, raise_errors: bool = False,
               strict: bool = False):
    """(report, gated by --target, error line): one file, local or remote."""
    from ..verify import verify as verify_file
    from ..verify.consumers import target_verdicts, verdict_exit_code, verdict_findings

    try:
        if spec.startswith(("hf://", "http://", "https://")):
            from ..hub.remote import verify_remote_targets  # header-only over HTTP range requests

            report, verdicts = verify_remote_targets(spec, targets, base=base)
            report.findings += verdict_findings(verdicts)
            return report, verdict_exit_code(verdicts, strict=strict), None
        report = verify_file(spec, base=base, tensors=tensors)
        gated = 0
        if targets:
            verdicts = target_verdicts(spec, targets, base=base)
            report.findings += verdict_findings(verdicts)
            gated = verdict_exit_code(verdicts, strict=strict)  # strict: "not modelled" gates too
        return report, gated, None
    except LoraregError as exc:
        if raise_errors:
            raise
        return None, 0, exc.one_line()


# Below this many local files a second process costs more than it saves.
_PARALLEL_FROM = 16


def verify_many(files: list[str], base: str | None, tensors: bool, targets, strict: bool = False) -> list[tuple]:
    """Verify files in order; local ones shared with forked copies of this process (fork_map.py: they inherit
    the loaded modules, so a copy starts in milliseconds) when there are enough of them and more than one CPU."""
    local = [f for f in files if not f.startswith(("hf://", "http://", "https://"))]
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    if len(local) < _PARALLEL_FROM or workers < 2 or len(local) != len(files) or not hasattr(os, "fork"):
        return [verify_one(spec, base, tensors, targets, strict=strict) for spec in files]
    from .fork_map import fork_map

    if tensors and _scans_past_stdlib_budget(local, workers):
        # Every process would scan its first files on the standard library, then import numpy for the rest:
        # imported here once, the copies inherit it (one import instead of one per process; same findings).
        import numpy  # noqa: F401
    # The first file runs here: it loads the fingerprints, key indexes and imports that the forked copies
    # then inherit instead of each building them again.
    first = verify_one(files[0], base, tensors, targets, strict=strict)
    return [first, *fork_map(lambda spec: verify_one(spec, base, tensors, targets, strict=strict), files[1:],
                             workers)]


def _scans_past_stdlib_budget(files: list[str], processes: int) -> bool:
    """Whether these files hold more bytes than ``processes`` processes scan without numpy (verify/health.py's
    budget per process)."""
    from ..verify.health import STDLIB_SCAN_BYTES

    budget = STDLIB_SCAN_BYTES * processes
    total = 0
    for spec in files:
        try:
            total += os.stat(spec).st_size
        except OSError:  # verify_one reports it
            continue
        if total > budget:
            return True
    return False


def _render(reports, strict: bool) -> None:
    from ..verify.outputs import failed
    from .output import markup_safe as escape  # file-derived text: controls made visible, markup escaped

    if not reports:  # -q with every file passing: no console (no rich) for nothing
        return
    out = console()
    colors = {"error": "red", "warning": "yellow", "info": "cyan"}
    for report in reports:
        verdict = "[red]FAIL[/red]" if failed(report, strict) else "[green]OK[/green]  "
        facts = []
        if report.format:
            facts.append(f"{report.format} {report.network_type or ''}".strip())
        arch = report.detected_architecture or ("/".join(report.candidates) if report.candidates else "no base fits")
        if report.format:
            declared = f" (declared {report.declared_architecture})" if report.declared_architecture else ""
            facts.append(f"{arch}{declared}")
            facts.append(f"{report.modules} modules")
        if report.requested_base:
            facts.append(f"base {report.requested_base}")
        out.print(f"{verdict} {escape(report.path)}  {escape(' · '.join(facts))}")
        for f in report.findings:
            color = colors[f.severity]
            key = f" [dim]{escape(f.key)}[/dim]" if f.key else ""
            out.print(f"  [{color}]{f.severity:7}[/{color}] {f.code}{key}  {escape(f.message)}")
            if f.hint:
                out.print(f"          hint: {escape(f.hint)}")


def _summary(reports, strict: bool) -> str:
    from ..verify.outputs import run_document

    s = run_document(reports, strict=strict)["summary"]
    return (f"{s['files']} file(s): {s['passed']} passed, {s['failed']} failed "
            f"({s['error']} errors, {s['warning']} warnings, {s['info']} notes)")


def run_verify(paths: tuple[str, ...], base: str | None, strict: bool, no_tensors: bool, as_json: bool, fmt: str,
               junit: Path | None, quiet: bool, targets: tuple[str, ...]) -> int:
    """The command: the parameters as click's ``verify`` command receives them; the exit code."""
    from ..safetensors_io import atomic_write
    from ..verify.outputs import failed, github_annotations, json_text, junit_xml

    fmt = "json" if as_json else fmt
    files = expand_paths(paths)
    if base is not None:
        from ..verify import load_base

        load_base(base)  # a bad --base is a usage error before any file is read
    if len(files) == 1:  # one file: its usage/IO error is the command's error (exit 2, one line)
        report, gated, error = verify_one(files[0], base, not no_tensors, targets, raise_errors=True,
                                          strict=strict)
        outcomes = [(report, gated, error)]
    else:
        outcomes = verify_many(files, base, not no_tensors, targets, strict)
    reports = [report for report, _, _ in outcomes if report is not None]
    gated = sum(g for _, g, _ in outcomes)
    io_errors = 0
    for _, _, error in outcomes:
        if error is not None:
            io_errors += 1
            status(f"lorareg: error: {error}")
    if fmt == "json":
        echo(json_text(reports, strict=strict))
    elif fmt == "github":
        echo(github_annotations(reports, strict=strict), nl=False)
        status(_summary(reports, strict))
    else:
        _render([r for r in reports if failed(r, strict)] if quiet else reports, strict)
        if len(reports) > 1 or quiet:
            print_line(_summary(reports, strict))  # plain text: printed as rich would, without rich
    if junit is not None:
        with atomic_write(junit) as f:
            f.write(junit_xml(reports, strict=strict).encode())
    if io_errors:
        return 2
    return 1 if gated or any(failed(r, strict) for r in reports) else 0
