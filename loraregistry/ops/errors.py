"""Errors of the adapter operations; all are ``LoraregError`` (exit 2) except a failing output (exit 1)."""

from __future__ import annotations

from ..errors import IncompatibleArchitecture, LoraregError, UsageError


class OutputIsInput(UsageError):
    """The output path names one of the inputs; writing it would destroy the input."""


class RankTooHigh(UsageError):
    """A requested rank above what the adapter (or the merge) holds."""


class BadMergeWeight(UsageError):
    """An ``ADAPTER:WEIGHT`` argument whose weight is not a finite number."""


class MixedArchitectures(IncompatibleArchitecture):
    """Adapters for different base architectures cannot be merged."""


class DoraNeedsBase(UsageError):
    """DoRA's delta depends on the base weight, which this operation does not have."""


class UnsupportedModule(UsageError):
    """A module whose algorithm or shape this operation cannot handle."""


class OutputFailsVerify(LoraregError):
    """The written output has verify errors; it was not put in place (``--force`` to keep it anyway)."""

    exit_code = 1
