"""What every check needs, worked out once per file: the adapter, each module's delta shape, the
declared and detected architecture, and the base the modules are checked against."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from ..adapter import AdapterFile
from ..architectures import Fingerprint, fingerprint
from ..canonical import ModuleKey
from ..record import Record
from .detect import Declaration, Detection, detect_architecture, read_declaration
from .shapes import Problem, Shape, factor_problems

if TYPE_CHECKING:
    from .base import Base


class Context(Record):
    adapter: AdapterFile
    base: Base | None  # the requested base (--base), if any
    deltas: dict[ModuleKey, Shape | None]
    factor_problems: dict[ModuleKey, list[Problem]]
    declaration: Declaration
    detection: Detection

    def __init__(self, adapter: AdapterFile, base: Base | None, deltas: dict[ModuleKey, Shape | None],
                 factor_problems: dict[ModuleKey, list[Problem]], declaration: Declaration,
                 detection: Detection) -> None:
        self.adapter = adapter
        self.base = base
        self.deltas = deltas
        self.factor_problems = factor_problems
        self.declaration = declaration
        self.detection = detection

    @classmethod
    def build(cls, adapter: AdapterFile, base: Base | None) -> Context:
        deltas: dict[ModuleKey, Shape | None] = {}
        problems: dict[ModuleKey, list[Problem]] = {}
        # What factor_problems reads of a module: an adapter has a few dozen such signatures over hundreds of modules.
        seen: dict[tuple, tuple[Shape | None, list[Problem]]] = {}
        for key, info in adapter.modules.items():
            signature = (info.algo, info.alpha, info.rank,
                         tuple([(role, t.dtype, t.shape) for role, t in info.tensors.items()]))
            found = seen.get(signature)
            if found is None:
                found = seen[signature] = factor_problems(info)
            deltas[key], problems[key] = found[0], list(found[1])
        declaration = read_declaration(adapter.header.metadata)
        detection = detect_architecture(adapter.modules, deltas, declaration)
        return cls(adapter, base, deltas, problems, declaration, detection)

    @cached_property
    def target(self) -> Fingerprint | None:
        """The fingerprint modules are checked against: the requested base, else the best-fitting one."""
        if self.base is not None:
            return self.base.fingerprint
        best = self.detection.best
        return fingerprint(best.fingerprint) if best is not None else None

    @property
    def target_label(self) -> str:
        if self.base is not None:
            return self.base.label
        best = self.detection.best
        return self.detection.architecture or (best.fingerprint if best else "none")
