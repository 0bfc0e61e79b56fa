"""One root error and a shallow tree named after failures.

Every error carries enough to print one line: what went wrong, where, and what to do.
The CLI turns them into messages in exactly one place (``loraregistry.cli``); the library
never prints. ``exit_code`` is 2 for usage and input errors (the click convention).
"""

from __future__ import annotations

from pathlib import Path


class LoraregError(Exception):
    """Root of every error lorareg raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = f"{self.path}: " if self.path else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{self.message}{hint}"


# --- files and containers -------------------------------------------------------------


class FileAccessError(LoraregError, OSError):
    """Missing path, a folder where a file was expected, unreadable or unwritable file."""


class InvalidSafetensorsError(LoraregError, ValueError):
    """The bytes are not a valid safetensors container."""


class HeaderTooLarge(InvalidSafetensorsError):
    """The declared header length exceeds the cap."""


class PickleCheckpointError(InvalidSafetensorsError):
    """A pickle/zip checkpoint (torch.save) where safetensors was expected."""


class TruncatedFileError(InvalidSafetensorsError):
    """The file ends before the data its header declares."""


class EmptyFileError(InvalidSafetensorsError):
    """The file has 0 bytes."""


class TooManyTensorsError(InvalidSafetensorsError):
    """The header lists more tensor entries than lorareg's cap."""


class TooManyValuesError(InvalidSafetensorsError):
    """The header holds more JSON values (outside strings) than lorareg's cap."""


class NumberOutOfRangeError(InvalidSafetensorsError):
    """A number in the header that loaders cannot represent (over 64 bits, 4,300 digits, beyond a double)."""


class LoneSurrogateError(InvalidSafetensorsError):
    """A header string holds a lone UTF-16 surrogate escape, which the safetensors library refuses."""


# What a file is instead, when it is not safetensors at all (see ``sniff``).


class GitLfsPointerError(InvalidSafetensorsError):
    """A Git LFS pointer file where the real file was expected."""


class HtmlPageError(InvalidSafetensorsError):
    """An HTML (or XML) page, typically a login or error page saved by a download."""


class JsonDocumentError(InvalidSafetensorsError):
    """A JSON document, typically an API error body saved by a download."""


class CompressedFileError(InvalidSafetensorsError):
    """A gzip or zip archive (not a PyTorch checkpoint)."""


class TextFileError(InvalidSafetensorsError):
    """A plain text file, typically an error message saved by a download."""


# --- content ---------------------------------------------------------------------------


class UnknownAdapterFormat(LoraregError, ValueError):
    """No known key format matches the tensors in the file."""


class MetadataError(LoraregError, ValueError):
    """Metadata that does not validate against the schema, or cannot be parsed."""


class UnknownArchitecture(LoraregError, ValueError):
    """An architecture id or alias that lorareg does not know."""


class IncompatibleArchitecture(LoraregError, ValueError):
    """The adapter does not fit the requested base architecture."""


class UsageError(LoraregError, ValueError):
    """Arguments that cannot work together, or a value out of range."""
