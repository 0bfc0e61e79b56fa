"""Training failures, named after what went wrong. All are ``LoraregError``s, so the CLI prints one line."""

from __future__ import annotations

from ..errors import FileAccessError, LoraregError, UsageError


class TrainError(LoraregError):
    """Root of the training errors."""


class ConfigError(TrainError, UsageError):
    """A training config that does not validate: the message names the field and the allowed values."""


class BaseModelError(TrainError, ValueError):
    """The base model cannot be loaded offline, or is not an architecture lorareg trains."""


class DatasetError(TrainError, ValueError):
    """An empty dataset, or a bad item when the config says to stop on it."""


class MissingDependency(TrainError, ImportError):
    """An optional package the config asks for (bitsandbytes, prodigyopt, ...) is not installed."""


class CheckpointError(TrainError, FileAccessError):
    """No checkpoint to resume from, or one that does not belong to this run."""


class ExportError(TrainError):
    """The trained adapter failed verification; nothing was written in its place."""

    exit_code = 1
