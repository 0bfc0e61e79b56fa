"""Base architectures: ids, aliases and module fingerprints."""

from .ids import ARCHITECTURES, Architecture, get, resolve

__all__ = ["ARCHITECTURES", "Architecture", "get", "resolve"]
