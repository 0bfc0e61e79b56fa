"""The known-bad adapter library: one file per defect, named after it, each getting its code."""

from __future__ import annotations

import pytest

from loraregistry.verify import verify
from loraregistry.verify.findings import CODES
from tests.adapters import KNOWN_BAD_ADAPTERS, BadAdapter
from tests.known_bad import KNOWN_BAD
from tests.test_verify_integrity import EXPECTED as CONTAINER_CODES

# Codes no file in the libraries triggers, and why.
UNTRIGGERED = {
    "LRG015": "fallback for container errors no rule classifies; every known container defect has its own code",
    "LRG106": "no key format maps OFT/IA3/GLoRA tensors to roles yet, so no module has an unchecked algorithm",
    "LRG107": "covered by the peft/attn-procs goldens (test_verify_goldens)",
    "LRG108": "covered by the LyCORIS LoHa/LoKr goldens (test_verify_goldens)",
    "LRG405": "covered in test_verify_health with an F8_E8M0 tensor where ml_dtypes lacks it",
}


@pytest.mark.parametrize("case", KNOWN_BAD_ADAPTERS, ids=lambda c: c.name)
def test_known_bad_adapter_gets_its_code(case: BadAdapter, tmp_path):
    path = case.build(tmp_path)
    before = path.read_bytes()
    report = verify(path, base=case.base)
    matching = [f for f in report.findings if f.code == case.code]
    assert matching, f"{case.name}: expected {case.code}, got {report.codes()}"
    assert case.phrase in matching[0].message
    assert all(f.hint for f in matching)
    assert report.exit_code(strict=True) == 1 or CODES[case.code].severity == "info"
    assert path.read_bytes() == before


def test_library_covers_every_code():
    covered = {c.code for c in KNOWN_BAD_ADAPTERS} | set(CONTAINER_CODES.values()) | set(UNTRIGGERED)
    structural = {code for code, info in CODES.items() if info.family != "consumer"}  # LRG6xx: test_consumers_*
    assert covered == structural
    assert len({c.name for c in KNOWN_BAD_ADAPTERS}) == len(KNOWN_BAD_ADAPTERS)


def test_healthy_small_adapters_are_clean(tmp_path):
    from tests.adapters import lora_tensors, write_adapter

    for arch, expected in (("sd1", "sd1"), ("sdxl-base", "sdxl-base")):
        path = write_adapter(tmp_path / f"{arch}.safetensors", lora_tensors(arch),
                             {"modelspec.architecture": f"{expected}", "modelspec.license": "mit",
                              "modelspec.trigger_phrase": "sks"})
        report = verify(path)
        assert report.findings == [], [f.message for f in report.findings]
        assert report.detected_architecture == expected


# --- agreement with the safetensors library (issue 13, item 13) ----------------------------------------------


def _library_loads(path) -> bool:
    """Whether the safetensors library opens the file and reads every tensor (as numpy arrays)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            f.metadata()
            for name in f.keys():
                f.get_tensor(name)
    except Exception:  # noqa: BLE001 - any refusal counts: SafetensorError, ValueError from numpy, ...
        return False
    return True


@pytest.mark.parametrize("bad", KNOWN_BAD, ids=lambda b: b.name)
def test_what_the_safetensors_library_refuses_verify_fails_with_its_code(bad, tmp_path):
    path = tmp_path / f"{bad.name}.safetensors"
    path.write_bytes(bad.content)
    # Either side of the flag is checked: a case marked "the library loads it" must still load, so lorareg's
    # extra strictness stays deliberate and listed.
    assert _library_loads(path) is bad.library_loads
    report = verify(path)
    assert [f.code for f in report.findings] == [CONTAINER_CODES[bad.name]]
    assert report.exit_code() == 1
