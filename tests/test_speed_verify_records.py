"""``Record`` classes (the header path's value classes, written without ``dataclasses``) behave as the dataclasses
they replaced: fields in ``__init__``'s order, equality and hashing by value, frozen ones refusing assignment,
``replace`` like ``dataclasses.replace``."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import pytest

import loraregistry
from loraregistry.architectures import fingerprint
from loraregistry.canonical import KeyMapping, ModuleKey
from loraregistry.record import FrozenInstanceError, FrozenRecord, Record
from loraregistry.verify.detect import Declaration, Fit
from loraregistry.verify.findings import finding
from loraregistry.verify.report import Report


def _record_classes() -> list[type]:
    for info in pkgutil.walk_packages(loraregistry.__path__, "loraregistry."):
        if info.name.startswith(("loraregistry.verify", "loraregistry.formats", "loraregistry.architectures")) or \
                info.name in ("loraregistry.adapter", "loraregistry.canonical", "loraregistry.safetensors_io",
                              "loraregistry.schema._foreign", "loraregistry.schema.resolve"):
            importlib.import_module(info.name)
    found, todo = [], [Record]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub is not FrozenRecord:
                found.append(sub)
    return found


RECORDS = _record_classes()


def test_the_header_path_records_are_found():
    names = {cls.__name__ for cls in RECORDS}
    assert {"ModuleInfo", "AdapterFile", "ModuleSpec", "Architecture", "KeyMapping", "WeightFacts", "ParsedKey",
            "FormatDetection", "Fit", "Declaration", "Detection", "CodeInfo", "Finding", "Report", "Context",
            "Verdict", "Verified", "Consumer", "SafetensorsHeader", "Found", "Findings", "ImportedMetadata",
            "LightImport"} <= names


@pytest.mark.parametrize("cls", RECORDS, ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_fields_are_the_init_parameters_in_order(cls):
    """Positional construction, ``replace`` and equality all rely on the two lists being one."""
    parameters = list(inspect.signature(cls.__init__).parameters)[1:]
    assert cls._fields == tuple(parameters)


def _dataclass_twin(cls: type) -> type:
    """The @dataclass the record stands for: same fields, same defaults."""
    signature = inspect.signature(cls.__init__)
    fields = [(name, object, dataclasses.field(default=p.default) if p.default is not p.empty else dataclasses.MISSING)
              for name, p in list(signature.parameters.items())[1:]]
    fields = [(n, t) if d is dataclasses.MISSING else (n, t, d) for n, t, d in fields]
    return dataclasses.make_dataclass(cls.__name__, fields, frozen=issubclass(cls, FrozenRecord))


@pytest.mark.parametrize(("make", "other"), [
    (lambda: Fit("sd1", ("sd1",), 3, 4, (ModuleKey("unet", "a"),)), lambda: Fit("sd1", ("sd1",), 3, 4)),
    (lambda: Declaration({"ss_base_model_version": "sd1"}, "v"), lambda: Declaration()),
    (lambda: fingerprint("sd1").lookup("unet", "conv_in"), lambda: fingerprint("sd1").lookup("unet", "conv_out")),
    (lambda: finding("missing-license", "m", key="k"), lambda: finding("missing-license", "m")),
])
def test_frozen_records_compare_hash_and_refuse_assignment_like_frozen_dataclasses(make, other):
    a, b, c = make(), make(), other()
    twin = _dataclass_twin(type(a))
    twin_a, twin_c = twin(*a._values()), twin(*c._values())
    assert (a == b, a == c, a != c) == (True, twin_a == twin_c, twin_a != twin_c) == (True, False, True)
    assert a.__eq__(twin_a) is NotImplemented and a != a._values()
    if all(isinstance(v, (str, int, tuple, type(None))) for v in a._values()):
        assert hash(a) == hash(b) == hash(a._values())
    assert repr(a) == repr(twin_a)
    name = a._fields[0]
    with pytest.raises(FrozenInstanceError, match=f"cannot assign to field '{name}'"):
        setattr(a, name, 1)
    with pytest.raises(AttributeError):  # FrozenInstanceError is one, as dataclasses' is
        delattr(a, name)
    assert a == b


def test_mutable_records_are_unhashable_and_assignable():
    report = Report("a")
    with pytest.raises(TypeError):
        hash(report)
    report.modules = 3
    assert report == Report("a", modules=3) and report != Report("b", modules=3)
    assert Report("a").findings is not Report("a").findings  # a fresh list each, like default_factory
    mapping = KeyMapping("kohya")
    assert (mapping.mapped, mapping.unknown, mapping.dialect) == ({}, [], {})
    assert repr(mapping) == "KeyMapping(format='kohya', mapped={}, unknown=[], dialect={})"


def test_replace_builds_a_changed_copy_like_dataclasses_replace():
    report = Report("a", findings=[finding("missing-license", "m")], modules=2)
    changed = report.replace(modules=5, format="kohya")
    assert (changed.path, changed.modules, changed.format, changed.findings) == ("a", 5, "kohya", report.findings)
    assert report.modules == 2
    fit = Fit("sd1", ("sd1",), 3, 4)
    assert fit.replace(total=5) == Fit("sd1", ("sd1",), 3, 5)
    with pytest.raises(TypeError):
        fit.replace(nonsense=1)
