"""``lorareg fix``: after ``--for diffusers`` the file loads into the real diffusers with every module, and the
tiny UNet computes what the ORIGINAL adapter's deltas, applied by hand, give; plus the CLI contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loraregistry.cli import cli, main
from loraregistry.fix import fix
from tests.test_consumers_diffusers import GOLDEN, add_kohya_dora, arch_of, derive, diffusers_load
from tests.tiny_models import tiny_pipeline_dir  # noqa: F401 - fixture

FIXABLE = ["sd2_kohya_conv_proj", "sd1_lycoris_loha", "sd1_lycoris_lokr"]


@pytest.fixture
def lorareg(monkeypatch):
    """``lorareg`` with ``fix`` registered the way cli/__init__.py's COMMANDS will register it."""
    monkeypatch.setitem(cli.lazy_commands, "fix", "loraregistry.cli.fix_cmd:fix")
    return lambda *args: main([str(a) for a in args])


def unet_with_deltas(path: Path, arch: str):
    """A fresh tiny UNet with every UNet module's delta of ``path`` added to its weight, in float64 maths."""
    import torch

    from loraregistry.adapter import AdapterFile
    from loraregistry.ops.common import by_module
    from loraregistry.ops.delta import module_delta
    from loraregistry.ops.io import load_canonical
    from tests.tiny_models import tiny_unet

    unet = tiny_unet(arch)
    state = unet.state_dict()
    for module, roles in by_module(load_canonical(AdapterFile.open(path))).items():
        if module.component != "unet":
            continue
        weight = state[f"{module.path}.weight"]
        delta = module_delta(roles, out_shape=tuple(weight.shape))
        state[f"{module.path}.weight"] = (weight.double() + torch.from_numpy(delta)).to(weight.dtype)
    unet.load_state_dict(state)
    return unet


def unet_output(unet, arch: str):
    import torch

    gen = torch.Generator().manual_seed(0)
    sample = torch.randn((1, 4, 16, 16), generator=gen)
    context = torch.randn((1, 8, unet.config.cross_attention_dim), generator=gen)
    with torch.no_grad():
        return unet(sample, torch.tensor([10]), encoder_hidden_states=context).sample


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXABLE)
def test_fixed_file_loads_fully_and_computes_the_original_delta(name, tmp_path, tiny_pipeline_dir):
    import torch

    arch = arch_of(name)
    source = GOLDEN / f"{name}.safetensors"
    out = tmp_path / "fixed.safetensors"
    result = fix(source, out, targets="diffusers", base=str(tiny_pipeline_dir(arch)))
    assert result.needed and [v.outcome for v in result.after] == ["loads"]
    assert all(m.rel_error == 0.0 for m in result.modules)  # exact: LoHa r1*r2, LoKr rank products, reshapes

    real = diffusers_load(out, arch)
    assert real["error"] is None
    from loraregistry.adapter import AdapterFile

    wanted = {c: sum(1 for m in AdapterFile.open(source).modules if m.component == c) for c in real["patched"]}
    assert real["patched"] == wanted  # 0 missing modules
    from tests.tiny_models import tiny_unet

    got = unet_output(real["pipe"].unet, arch)
    expected = unet_output(unet_with_deltas(source, arch), arch)
    effect = float((expected - unet_output(tiny_unet(arch), arch)).abs().max())
    assert effect > 1e-5  # the adapter changes the output, so the comparison means something
    # The fixed factors are stored in the input's fp16, so allow fp16 rounding: 1% of the adapter's effect.
    torch.testing.assert_close(got, expected, atol=0.01 * effect + 5e-6, rtol=0)  # + fp32 noise


def test_file_that_needs_nothing_gets_a_message_and_exit_0(lorareg, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    assert lorareg("fix", GOLDEN / "sd1_kohya.safetensors", "-o", out, "--for", "diffusers") == 0
    assert "nothing to fix" in capsys.readouterr().err
    assert not out.exists()


def test_output_equal_to_input_is_refused_with_exit_2(lorareg, tmp_path, capsys):
    copy = tmp_path / "a.safetensors"
    copy.write_bytes((GOLDEN / "sd1_lycoris_loha.safetensors").read_bytes())
    before = copy.read_bytes()
    assert lorareg("fix", copy, "-o", tmp_path / "." / "a.safetensors") == 2
    assert "one of the inputs" in capsys.readouterr().err
    assert copy.read_bytes() == before


def test_unknown_target_lists_the_known_ones(lorareg, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    assert lorareg("fix", GOLDEN / "sd1_kohya.safetensors", "-o", out, "--for", "automatic1111") == 2
    err = capsys.readouterr().err
    assert "'automatic1111'" in err and "diffusers, peft, comfyui, invokeai, a1111, forge, kohya, all" in err
    assert not out.exists()


@pytest.mark.parametrize("targets,message", [
    ("peft,diffusers", "cannot be combined"),  # bare keys of one model vs component prefixes
    ("kohya,diffusers", "opposite SD2 projection shapes"),
    ("a1111", "do not model flux"),
])
def test_targets_that_cannot_be_served_by_one_file_are_usage_errors(targets, message, lorareg, tmp_path, capsys):
    source, base = {"a1111": (GOLDEN / "mmdit" / "flux_diffusers.safetensors", "flux1-dev")}.get(
        targets, (GOLDEN / "sd2_kohya_conv_proj.safetensors", "sd2-512"))
    out = tmp_path / "out.safetensors"
    assert lorareg("fix", source, "-o", out, "--for", targets, "--base", base) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_all_leaves_out_the_loaders_that_do_not_model_the_family(tmp_path):
    """FLUX.1: a1111 has no rules for it, so "all" fixes for the loaders that do; InvokeAI skips sd-scripts' final
    layer, which the one kohya file of "all" holds, so it is left out too (``--for invokeai`` on its own)."""
    from loraregistry.verify.consumers import CONSUMERS
    from tests.oracle_diffusers import pipeline_dir

    result = fix(GOLDEN / "mmdit" / "flux_diffusers.safetensors", tmp_path / "out.safetensors", targets="all",
                 base=str(pipeline_dir("flux", str(tmp_path))))
    assert result.targets == ("diffusers", "comfyui", "forge")
    assert not CONSUMERS["a1111"].models("flux") and CONSUMERS["invokeai"].models("flux")
    assert {v.consumer: v.outcome for v in result.after} == dict.fromkeys(result.targets, "loads")


def test_peft_for_a_file_of_several_models_is_refused_with_exit_1(lorareg, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    assert lorareg("fix", GOLDEN / "sd1_kohya.safetensors", "-o", out, "--for", "peft") == 1
    assert "peft wraps one model" in capsys.readouterr().err
    assert not out.exists()


def test_dora_beyond_max_error_is_refused_naming_the_modules(tmp_path, tiny_pipeline_dir):
    from loraregistry.fix import FixLosesInformation

    dora = derive(tmp_path, "dora", "sd1_kohya", add_kohya_dora)
    out = tmp_path / "out.safetensors"
    with pytest.raises(FixLosesInformation, match=r"text_encoder:text_model\.encoder\.layers\.0"):
        fix(dora, out, targets="diffusers", base=str(tiny_pipeline_dir("sd1")), rank=1)
    assert not out.exists()
    assert not list(tmp_path.glob(".*lorareg*"))  # no temporary left behind


def test_dora_at_full_rank_is_exact_and_loads(tmp_path, tiny_pipeline_dir):
    dora = derive(tmp_path, "dora", "sd1_kohya", add_kohya_dora)
    out = tmp_path / "out.safetensors"
    result = fix(dora, out, targets="diffusers", base=str(tiny_pipeline_dir("sd1")), rank=64)
    assert max(m.rel_error for m in result.modules) < 1e-6
    assert [v.outcome for v in result.after] == ["loads"]


def test_dora_without_the_base_weights_is_a_usage_error(tmp_path):
    from loraregistry.errors import UsageError

    dora = derive(tmp_path, "dora", "sd1_kohya", add_kohya_dora)
    with pytest.raises(UsageError, match="exact base weights"):
        fix(dora, tmp_path / "out.safetensors", targets="diffusers", base="sd1")


def test_peft_without_prefixes_gets_them_for_diffusers(tmp_path, tiny_pipeline_dir):
    out = tmp_path / "out.safetensors"
    result = fix(GOLDEN / "sd1_peft_prefixed.safetensors", out, targets="diffusers",
                 base=str(tiny_pipeline_dir("sd1")))
    from loraregistry.adapter import AdapterFile

    assert all(k.startswith("unet.") for k in AdapterFile.open(out).header.tensors)
    assert [v.outcome for v in result.after] == ["loads"]


def test_for_a1111_writes_kohya_keys_and_the_sd_version(tmp_path, tiny_pipeline_dir):
    from loraregistry.adapter import AdapterFile
    from loraregistry.verify.consumers.a1111 import sd_version

    out = tmp_path / "out.safetensors"
    result = fix(GOLDEN / "sdxl_diffusers.safetensors", out, targets="a1111,forge",
                 base=str(tiny_pipeline_dir("sdxl")))
    fixed = AdapterFile.open(out)
    assert fixed.format == "kohya"
    assert sd_version(fixed.header.metadata) == "SDXL"
    assert fixed.header.metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert {v.consumer: v.outcome for v in result.after} == {"a1111": "loads", "forge": "loads"}


def test_strip_bloat_drops_tag_frequency(tmp_path, tiny_pipeline_dir):
    from safetensors.numpy import load_file, save_file

    from loraregistry.adapter import AdapterFile

    src = tmp_path / "bloated.safetensors"
    tensors = load_file(str(GOLDEN / "sd2_kohya_conv_proj.safetensors"))
    save_file(tensors, str(src), metadata={"ss_v2": "True", "ss_base_model_version": "sd_v2",
                                           "ss_tag_frequency": '{"x": {"' + "a" * 70000 + '": 1}}'})
    out = tmp_path / "out.safetensors"
    result = fix(src, out, targets="diffusers", strip_bloat=True, base=str(tiny_pipeline_dir("sd2")))
    assert any("ss_tag_frequency" in c for c in result.changes)
    assert "ss_tag_frequency" not in AdapterFile.open(out).header.metadata


def test_json_summary(lorareg, tmp_path, capsys, tiny_pipeline_dir):
    import json

    out = tmp_path / "out.safetensors"
    code = lorareg("fix", GOLDEN / "sd1_lycoris_lokr.safetensors", "-o", out, "--for", "diffusers", "--base",
                   tiny_pipeline_dir("sd1"), "--json")
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["before"] == {"diffusers": "fails"} and data["after"] == {"diffusers": "loads"}
    assert data["output"] == str(out)


def test_reshape_only_changes_projection_layout(tmp_path, tiny_pipeline_dir):
    """SD2 conv projections become 2-D with the same values: reshaping is exact."""
    from loraregistry.adapter import AdapterFile
    from loraregistry.ops.io import load_canonical

    src = GOLDEN / "sd2_kohya_conv_proj.safetensors"
    out = tmp_path / "out.safetensors"
    fix(src, out, targets="diffusers", base=str(tiny_pipeline_dir("sd2")))
    before, after = load_canonical(AdapterFile.open(src)), load_canonical(AdapterFile.open(out))
    proj = [k for k in before if k.path.endswith("proj_in") and k.role in ("down", "up")]
    assert proj and all(after[k].ndim == 2 and np.array_equal(after[k].ravel(), before[k].ravel()) for k in proj)
