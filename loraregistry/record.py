"""Value classes without the start-up cost of ``dataclasses``.

``@dataclass`` writes each class's ``__init__``, ``__eq__``, ``__repr__``, ... as source text and compiles it when the
module is imported (0.5-1 ms a class), and ``import dataclasses`` imports ``inspect`` (with ``ast``, ``dis`` and
``tokenize``): a header-level ``lorareg verify`` paid ~20 ms for them before reading a byte. A ``Record`` subclass
declares its fields as annotations, in order, and writes its own ``__init__`` taking them in that order (a test
checks both agree); the rest is shared code compiled once with this module:

* ``==`` compares two instances of the same class field by field (``NotImplemented`` for anything else), ``repr``
  is ``Name(field=value, ...)`` and a mutable record is unhashable, as with ``@dataclass``;
* ``FrozenRecord`` instances refuse assignment and deletion and hash by their fields, as with
  ``@dataclass(frozen=True)``; their ``__init__`` sets the fields with ``_set``;
* ``record.replace(**changes)`` is ``dataclasses.replace(record, **changes)``.
"""

from __future__ import annotations

from typing import Any


class FrozenInstanceError(AttributeError):
    """Assigning to or deleting a field of a ``FrozenRecord`` (``dataclasses.FrozenInstanceError``'s role)."""


class Record:
    """A mutable value class; see the module docstring."""

    _fields: tuple[str, ...] = ()
    _repr_skips: frozenset[str] = frozenset()  # fields left out of repr (``field(repr=False)``)
    __hash__ = None  # type: ignore[assignment]  # equal by value and mutable: not hashable

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._fields = tuple(cls.__dict__.get("__annotations__", ()))

    def _values(self) -> tuple:
        return tuple([getattr(self, name) for name in self._fields])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields if name not in self._repr_skips)
        return f"{type(self).__qualname__}({shown})"

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` (field name -> value) made, built through ``__init__``."""
        return type(self)(**{**dict(zip(self._fields, self._values())), **changes})


class FrozenRecord(Record):
    """An immutable value class; see the module docstring."""

    def _set(self, **fields: Any) -> None:
        """Set fields from ``__init__`` (assignment is refused)."""
        self.__dict__.update(fields)

    def __hash__(self) -> int:
        return hash(self._values())

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")
