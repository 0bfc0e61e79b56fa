"""The pydantic models of ``lorareg verify --json`` (schemas/verify-output.v1.schema.json is exported from
``VerifyRunModel``). Only the schema export and the tests load them: writing the document needs no pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .outputs import RUN_SCHEMA_VERSION
from .report import REPORT_SCHEMA_VERSION


class FindingModel(BaseModel):
    """One finding: a stable code, its severity, and what to do."""

    model_config = ConfigDict(extra="forbid")
    code: str = Field(pattern=r"^LRG\d{3}$", description="Stable code; see docs/verify-codes.md.")
    name: str = Field(description="Short name of the code, e.g. module-not-in-base.")
    severity: Literal["error", "warning", "info"]
    family: Literal["integrity", "format", "architecture", "compatibility", "health", "metadata", "consumer"]
    message: str = Field(description="What is wrong, with the numbers: got ..., expected ....")
    key: str | None = Field(description="The tensor key or module the finding is about, when there is one.")
    hint: str | None = Field(description="What to do about it.")


class FileReportModel(BaseModel):
    """The report for one file (``Report.to_dict()``)."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal["1"] = REPORT_SCHEMA_VERSION
    path: str
    ok: bool = Field(description="No error finding (warnings and infos allowed).")
    summary: dict[str, int] = Field(description="Findings per severity: error, warning, info.")
    format: str | None = Field(description="Key format: kohya, peft, diffusers, attn_procs, mixed; null if unread.")
    network_type: str | None = Field(description="lora, locon, loha, lokr, dora, full.")
    detected_architecture: str | None = Field(description="Architecture id the shapes fit; null if none or ambiguous.")
    candidates: list[str] = Field(description="Every architecture id whose shapes hold all modules.")
    declared_architecture: str | None = Field(description="What the metadata declares.")
    declared_source: str | None = Field(description="The header key the declaration came from.")
    requested_base: str | None = Field(description="--base as resolved: an id, or a model folder/checkpoint path.")
    modules: int = Field(description="Patched modules.")
    components: dict[str, int] = Field(description="Modules per component.")
    fitted: int | None = Field(description="Modules that fit the base checked against.")
    tensors_checked: bool = Field(description="Whether tensor values were scanned.")
    findings: list[FindingModel]


class VerifyRunModel(BaseModel):
    """What ``lorareg verify --json`` prints: one report per file and a summary."""

    model_config = ConfigDict(extra="forbid", title="lorareg verify output")
    schema_version: Literal["1"] = RUN_SCHEMA_VERSION
    strict: bool = Field(description="Whether warnings fail (--strict).")
    ok: bool = Field(description="True when the run exits 0.")
    summary: dict[str, int] = Field(
        description="files, passed, failed, and findings per severity (error, warning, info) over all files.")
    files: list[FileReportModel]
