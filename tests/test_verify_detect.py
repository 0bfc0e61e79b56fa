"""Detection against the real fingerprints with full-size adapters (every kohya default target, rank 1)."""

from __future__ import annotations

import numpy as np
import pytest

from loraregistry.formats.sgm import diffusers_to_sgm
from loraregistry.verify import verify
from tests.adapters import lora_tensors, write_adapter


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Factory: the full kohya default-target LoRA of an architecture, rank 1, written once per module."""
    folder = tmp_path_factory.mktemp("full")
    cache = {}

    def make(arch: str):
        if arch not in cache:
            cache[arch] = write_adapter(folder / f"{arch}.safetensors", lora_tensors(arch, rank=1, small=False))
        return cache[arch]

    return make


def _problems(report):
    return [f"{f.code} {f.message}" for f in report.findings if f.severity != "info"]


@pytest.mark.parametrize("arch, counts", [
    ("sd1", {"unet": 192, "text_encoder": 72}),
    ("sdxl-base", {"unet": 722, "text_encoder": 72, "text_encoder_2": 192}),
])
def test_full_adapter_is_detected_and_clean(full, arch, counts):
    report = verify(full(arch))
    assert report.detected_architecture == arch and report.candidates == (arch,)
    assert report.components == counts and report.fitted == sum(counts.values())
    assert _problems(report) == []
    assert {f.code for f in report.findings} == {"LRG502", "LRG503"}  # no trigger words, no license


def test_sd2_variants_tie_without_declaration(full):
    report = verify(full("sd2"), tensors=False)
    assert report.components == {"unet": 192, "text_encoder": 138}
    assert report.detected_architecture is None and report.candidates == ("sd2-512", "sd2-768-v")
    info = [f for f in report.findings if f.code == "LRG204"]
    assert info and "nothing declared tells them apart" in info[0].message
    assert _problems(report) == []


@pytest.mark.parametrize("metadata, arch, how", [
    ({"ss_v2": "True", "ss_v_parameterization": "True"}, "sd2-768-v", "declared architecture"),
    ({"modelspec.prediction_type": "v"}, "sd2-768-v", "declared prediction type"),
    ({"modelspec.prediction_type": "epsilon"}, "sd2-512", "declared prediction type"),
    ({"modelspec.resolution": "768x768"}, "sd2-768-v", "declared resolution"),
])
def test_sd2_variant_decided_by_declared_facts(tmp_path, metadata, arch, how):
    path = write_adapter(tmp_path / "sd2.safetensors", lora_tensors("sd2"), metadata)
    report = verify(path, tensors=False)
    assert report.detected_architecture == arch
    assert how in next(f.message for f in report.findings if f.code == "LRG204")
    assert _problems(report) == []


def test_sd1_adapter_against_sdxl_base_says_what_it_is(full):
    report = verify(full("sd1"), base="sdxl-base", tensors=False)
    assert not report.ok and report.requested_base == "sdxl-base"
    first = report.findings[0]
    assert first.code == "LRG203"
    assert first.message.startswith("this is an sd1 adapter (all 264 modules fit sd1), not sdxl-base: only ")
    assert "LRG300" in report.codes()  # and each module that is not there


def test_sd1_adapter_against_its_own_base_is_clean(full):
    for base in ("sd1", "SD 1.5", "stable-diffusion-v1/lora", "runwayml/stable-diffusion-v1-5"):
        report = verify(full("sd1"), base=base, tensors=False)
        assert _problems(report) == [] and report.requested_base == "sd1"


def test_sdxl_kohya_sgm_names_are_detected(tmp_path):
    tensors = {}
    for key, value in lora_tensors("sdxl-base").items():
        name, suffix = key.split(".", 1)
        if name.startswith("lora_unet_"):
            path = name[len("lora_unet_"):]
            from loraregistry.architectures import kohya_default_targets

            dotted = next(p for p in kohya_default_targets("sdxl-base", "unet") if p.replace(".", "_") == path)
            name = "lora_unet_" + diffusers_to_sgm(dotted, levels=3).replace(".", "_")
        tensors[f"{name}.{suffix}"] = value
    assert any(k.startswith("lora_unet_input_blocks_4_1_") for k in tensors)
    report = verify(write_adapter(tmp_path / "sgm.safetensors", tensors), tensors=False)
    assert report.detected_architecture == "sdxl-base" and _problems(report) == []


def test_text_encoder_only_adapter_fits_every_clip_l_base(tmp_path):
    tensors = lora_tensors("sd1", components=("text_encoder",))
    report = verify(write_adapter(tmp_path / "te.safetensors", tensors), tensors=False)
    assert report.detected_architecture is None
    assert {"sd1", "sdxl-base"} <= set(report.candidates)
    declared = write_adapter(tmp_path / "te_sd1.safetensors", tensors, {"ss_base_model_version": "sd_v1"})
    report = verify(declared, tensors=False)
    assert report.detected_architecture == "sd1" and report.declared_source == "ss_base_model_version"
    assert _problems(report) == []


def test_declared_architecture_mismatch_names_both(tmp_path):
    path = write_adapter(tmp_path / "a.safetensors", lora_tensors("sdxl-base"),
                         {"lorareg": '{"schema_version":"1","base":{"architecture":"sd1"}}'})
    found = next(f for f in verify(path, tensors=False).findings if f.code == "LRG202")
    assert found.message.startswith("declared sd1 (lorareg), but this is an sdxl-base adapter (all 35 modules")


def test_conv_shaped_sd2_projections_still_detect_sd2(tmp_path):
    tensors = lora_tensors("sd2")
    for key in [k for k in tensors if "proj_in" in k or "proj_out" in k]:
        if tensors[key].ndim == 2:
            tensors[key] = tensors[key][:, :, None, None]
    report = verify(write_adapter(tmp_path / "sd2.safetensors", tensors, {"ss_base_model_version": "sd_v2"}))
    assert report.detected_architecture == "sd2-512"
    assert {f.code for f in report.findings if f.severity == "warning"} == {"LRG308"}
    assert report.ok  # loads in A1111/ComfyUI: a warning, not an error


def test_no_tensors_option_reads_no_tensor_data(tmp_path, monkeypatch):
    import loraregistry.verify.checks.tensors as tensor_checks

    def forbidden(*args, **kwargs):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(tensor_checks, "scan", forbidden)
    monkeypatch.setattr(tensor_checks, "tensor_sha256", forbidden)
    monkeypatch.setattr(np, "memmap", forbidden)
    tensors = lora_tensors("sd1")
    tensors[next(k for k in tensors if k.endswith("lora_up.weight"))][0, 0] = np.nan
    path = write_adapter(tmp_path / "a.safetensors", tensors, {"lorareg": '{"schema_version":"1","tensor_sha256":"'
                                                               + "a" * 64 + '"}'})
    report = verify(path, tensors=False)
    assert not report.tensors_checked and "LRG400" not in report.codes() and "LRG504" not in report.codes()
