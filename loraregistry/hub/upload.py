"""``push``: verify an adapter, then upload it with its metadata, samples and model card in one commit."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import env
from .errors import HOSTILE_HINT, PushRefused, UntrustedServerData, server_text
from .uri import check_file_name, check_repo_id, is_commit_sha

METADATA_FILE = "lorareg.json"
SAMPLES_FOLDER = "samples"
FIGURES_FOLDER = "figures"
README_CAP = 4 << 20  # a model card; the Hub's largest are well under this
ANSWER_CAP = 16 << 20  # what the Hub answers to create_repo, the LFS batch and the commit: a few KB


@dataclass
class PushResult:
    repo_id: str
    endpoint: str
    commit: str
    commit_url: str
    files: list[str]
    report: Any = field(repr=False)  # the verify Report

    def to_dict(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "endpoint": self.endpoint, "commit": self.commit,
                "commit_url": self.commit_url, "files": self.files, "verify": self.report.to_dict()}


def push(path: str | os.PathLike[str], repo_id: str, *, private: bool = False, endpoint: str | None = None,
         token: str | None = None, revision: str | None = None, samples: Sequence[str | os.PathLike[str]] = (),
         commit_message: str | None = None, base: str | None = None,
         figures: Sequence[tuple[str | os.PathLike[str], str]] = ()) -> PushResult:
    """Verify ``path`` (refusing on any error, before touching the network), then create ``repo_id`` if
    needed and commit the adapter at the repo root, ``lorareg.json``, the samples (``samples/<name>``; the
    prompt comes from a same-name ``.txt`` next to the image, else the trigger words), the figures
    (``figures/<name>``: (image, caption) pairs such as a training loss plot, shown in the card) and README.md.

    The token comes from ``token`` or huggingface_hub's usual sources; it is sent only to ``endpoint``.
    """
    endpoint = env.prepare(endpoint)
    check_repo_id(repo_id)
    source = Path(path)
    from ..adapter import AdapterFile
    from ..verify import verify

    report = verify(source, base=base)
    errors = [f for f in report.findings if f.severity == "error"]
    if errors:
        raise PushRefused(str(source), errors)
    adapter = AdapterFile.open(source)
    meta = _completed_metadata(adapter, report)

    from huggingface_hub import CommitOperationAdd

    from ..architectures import resolve
    from .card import CardInput, Figure, Sample, build_card
    from .bounded import capped_answers
    from .client import default_endpoint, hub_api, hub_errors

    filename = check_file_name(source.name)
    sample_files = [(Path(s), f"{SAMPLES_FOLDER}/{check_file_name(Path(s).name)}") for s in samples]
    trigger_prompt = ", ".join(meta.trigger_words) or (meta.name or source.stem)
    card_samples = [Sample(in_repo, _prompt_for(p, trigger_prompt)) for p, in_repo in sample_files]
    figure_files = [(Path(f), f"{FIGURES_FOLDER}/{check_file_name(Path(f).name)}", caption) for f, caption in figures]
    api = hub_api(endpoint, token)
    with hub_errors(endpoint=endpoint, repo_id=repo_id, revision=revision), default_endpoint(endpoint), \
            capped_answers(endpoint, ANSWER_CAP):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        existing = _read_readme(endpoint, token, repo_id, revision)
        readme = build_card(CardInput(repo_id=repo_id, filename=filename, metadata=meta,
                                      architecture=resolve(meta.base.architecture), sha256=adapter.hashes.sha256,
                                      samples=card_samples,
                                      figures=[Figure(in_repo, caption) for _, in_repo, caption in figure_files]),
                           existing=existing)
        operations = [
            CommitOperationAdd(path_in_repo=filename, path_or_fileobj=str(source)),
            CommitOperationAdd(path_in_repo=METADATA_FILE, path_or_fileobj=_metadata_json(meta)),
            *(CommitOperationAdd(path_in_repo=in_repo, path_or_fileobj=str(p)) for p, in_repo in sample_files),
            *(CommitOperationAdd(path_in_repo=in_repo, path_or_fileobj=str(p)) for p, in_repo, _ in figure_files),
            CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=readme.encode("utf-8")),
        ]
        info = api.create_commit(repo_id, operations=operations, revision=revision,
                                 commit_message=commit_message or f"Upload {filename} with lorareg")
    if not is_commit_sha(info.oid):  # it is printed and recorded: no escape sequences, no paths
        raise UntrustedServerData(f"{endpoint} acknowledged the commit with {server_text(repr(info.oid), 80)}, which is "
                                  "no commit sha (40 lowercase hex digits); the upload may or may not have landed",
                                  hint=HOSTILE_HINT)
    return PushResult(repo_id=repo_id, endpoint=endpoint, commit=info.oid, commit_url=server_text(str(info.commit_url)),
                      files=[op.path_in_repo for op in operations], report=report)


def _completed_metadata(adapter, report):
    """The file's record plus what verify and hashing established (architecture, tensor hash)."""
    meta = adapter.metadata
    update: dict[str, Any] = {}
    if meta.tensor_sha256 is None and adapter.hashes.autov3:
        update["tensor_sha256"] = adapter.hashes.autov3
    if meta.base.architecture is None and report.detected_architecture:
        update["base"] = meta.base.model_copy(update={"architecture": report.detected_architecture})
    return meta.model_copy(update=update) if update else meta


def _metadata_json(meta) -> bytes:
    from ..schema import to_header_value

    return (json.dumps(json.loads(to_header_value(meta)), indent=2, sort_keys=True, ensure_ascii=False)
            + "\n").encode("utf-8")


def _prompt_for(image: Path, default: str) -> str:
    caption = image.with_suffix(".txt")
    try:
        return caption.read_text("utf-8").strip() or default
    except OSError:
        return default


def _read_readme(endpoint: str, token: str | None, repo_id: str, revision: str | None) -> str | None:
    """The repo's current README.md, or None when it has none (or the revision does not exist yet); read
    bounded, never through huggingface_hub's cache (whose paths a server's ETag would choose)."""
    from .api import small_file
    from .errors import RevisionNotFound
    from .transport import hub_headers

    try:
        data = small_file(endpoint, hub_headers(token), repo_id, "README.md", revision or "main", cap=README_CAP)
    except RevisionNotFound:
        return None
    return data.decode("utf-8", "replace") if data is not None else None
