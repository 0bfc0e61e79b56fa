"""SD3.5 (and SD3) LoRA training on tiny seeded pipelines (CPU, 32 px): the bases are told apart by structure,
every LoRA layer reaches the loss, one short run lowers the loss on fixed draws, and its exports pass
``verify --strict`` against the tiny base, load in diffusers with 0 missing / unexpected keys and change the
transformer's output; the kohya file (``lora_unet_joint_blocks_*``, fused q/k/v) continues the run exactly
(``network.init_from``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from loraregistry.verify import verify

from .test_train_support import (  # noqa: F401 - fixture
    mmdit_diffusers_load, one_thread, tiny_config, tiny_settings, torch_one_thread)

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
STEPS = 40


@pytest.mark.parametrize("arch, dual_attention, qk_norm", [
    ("sd3-medium", False, False),
    ("sd35-medium", True, True),
    ("sd35-large", False, True),
])
def test_bases_are_detected_and_every_lora_layer_reaches_the_loss(tmp_path, one_thread, arch,  # noqa: F811
                                                                   dual_attention, qk_norm):
    import torch

    from loraregistry.train import TrainingSet, build_components, scan_dataset, train_step
    from loraregistry.train.cache import TensorCache

    config = tiny_config(tmp_path, arch)
    parts = build_components(config)
    assert parts.architecture.id == arch and parts.prediction_type == "flow"
    names = parts.target_modules["transformer"]
    assert any(".attn2." in n for n in names) is dual_attention
    assert bool(parts.denoiser.config.qk_norm) is qk_norm
    # the last joint block drops its text output: its text queries would never train
    last = len(parts.denoiser.transformer_blocks) - 1
    assert f"transformer_blocks.{last}.attn.add_k_proj" in names
    assert f"transformer_blocks.{last}.attn.add_q_proj" not in names
    data = TrainingSet(scan_dataset(config.data), parts, config, TensorCache(config.data.cache_dir))
    data.prepare()
    batch = data.batch(0, 0, [0, 1])
    # CLIP-L + CLIP-G sequence (77 tokens) then T5's (SD3's default 77, capped at the tiny tokenizer's 64)
    assert batch.text.hidden.shape[1] == 77 + 64 and batch.text.pooled.shape[1] == 32 + 64
    loss = train_step(batch, parts, config, torch.Generator().manual_seed(0))
    loss.backward()
    lora_b = {n: p.grad for n, p in parts.denoiser.named_parameters() if "lora_B" in n}
    assert torch.isfinite(loss) and lora_b
    assert all(g is not None and g.abs().sum() > 0 for g in lora_b.values()), \
        [n for n, g in lora_b.items() if g is None or not g.abs().sum()]


@pytest.fixture(scope="module")
def sd35_run(tmp_path_factory):
    from loraregistry.train import train

    tmp = tmp_path_factory.mktemp("sd35-run")
    with torch_one_thread():
        config = tiny_config(tmp, "sd35-medium", optim={"lr": 2e-2, "scheduler": "constant"},
                             train={"steps": STEPS, "batch_size": 2, "seed": 7}, output={"dtype": "fp32"})
        result = train(config, quiet=True)
    return SimpleNamespace(result=result, tmp=tmp, files={o.format: o.path for o in result.outputs},
                           base=Path(result.verify_base))


def _fixed_draw_loss(parts, config, batch) -> float:
    """The flow loss of ``parts`` over 16 fixed (latent, noise, sigma) draws."""
    import torch

    from loraregistry.train import train_step

    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return float(np.mean([float(train_step(batch, parts, config, generator)) for _ in range(16)]))


def test_training_lowers_the_loss_and_the_kohya_file_continues_it_exactly(sd35_run, tmp_path):
    """Before: the base (LoRA at zero); after: the run's kohya file through ``init_from``, whose step-0 delta is the
    file's (fused q/k/v split back per target); the same fixed draws score both."""
    from loraregistry.train import TrainingSet, build_components, scan_dataset
    from loraregistry.train.cache import TensorCache
    from loraregistry.train.config import from_dict

    losses = [r["loss"] for r in sd35_run.result.fit.losses]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    settings = tiny_settings(tmp_path, "sd35-medium")
    base_config = from_dict(settings)
    settings["network"] = {"init_from": str(sd35_run.files["kohya"])}
    continued_config = from_dict(settings)
    scores = []
    for config in (base_config, continued_config):
        parts = build_components(config)
        data = TrainingSet(scan_dataset(config.data), parts, config, TensorCache(config.data.cache_dir))
        data.prepare()
        scores.append(_fixed_draw_loss(parts, config, data.batch(0, 0, [0, 1, 2, 3])))
    before, after = scores
    assert after < 0.95 * before, (before, after)
    # the continued model holds exactly the trained deltas diffusers loads from the diffusers export
    pipe, patched, _ = _load_with_diffusers(sd35_run.files["diffusers"])
    started = {n: m for n, m in parts.trained["transformer"].named_modules()
               if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert set(started) == set(patched)
    for name, module in started.items():
        np.testing.assert_allclose(module.get_delta_weight("default").detach().double().numpy(),
                                   patched[name].get_delta_weight("trained").detach().double().numpy(),
                                   rtol=1e-6, atol=1e-9, err_msg=name)


def test_exports_pass_verify_strict_and_kohya_uses_joint_block_names(sd35_run):
    from safetensors import safe_open

    from loraregistry.adapter import AdapterFile

    for fmt, path in sd35_run.files.items():
        report = verify(path, base=str(sd35_run.base))
        assert report.ok and not [f for f in report.findings if f.severity != "info"], (fmt, report.findings)
        meta = AdapterFile.open(path).metadata
        assert (meta.base.architecture, meta.base.prediction_type) == ("sd35-medium", "flow")
        assert meta.provenance.params["timestep_sampling"] == "logit_normal"
        assert "guidance_scale" not in meta.provenance.params  # SD3 has no guidance input
    with safe_open(str(sd35_run.files["kohya"]), "np") as f:
        keys = list(f.keys())
        x_qkv = f.get_tensor("lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight")
    assert all(k.startswith("lora_unet_joint_blocks_") for k in keys)
    assert any(k.startswith("lora_unet_joint_blocks_0_x_block_attn2_qkv.") for k in keys)  # SD3.5 medium's MMDiT-X
    assert any(k.startswith("lora_unet_joint_blocks_1_context_block_attn_qkv.") for k in keys)
    assert x_qkv.shape[0] == 3 * 4


def _load_with_diffusers(path: Path):
    return mmdit_diffusers_load(path, "sd35-medium")


def _transformer_output(pipe):
    import torch

    gen = torch.Generator().manual_seed(0)
    config = pipe.transformer.config
    with torch.no_grad():
        return pipe.transformer(hidden_states=torch.randn((1, 16, 8, 8), generator=gen),
                                encoder_hidden_states=torch.randn((1, 12, config.joint_attention_dim), generator=gen),
                                pooled_projections=torch.randn((1, config.pooled_projection_dim), generator=gen),
                                timestep=torch.tensor([500.0]), return_dict=False)[0]


def test_diffusers_loads_the_diffusers_export_with_every_module_and_it_changes_the_output(sd35_run):
    from loraregistry.adapter import AdapterFile
    from loraregistry.train.tiny_mmdit import tiny_mmdit_pipeline

    base_out = _transformer_output(tiny_mmdit_pipeline("sd35-medium"))
    pipe, patched, warnings = _load_with_diffusers(sd35_run.files["diffusers"])
    assert not [w for w in warnings if "missing keys" in w.lower() or "unexpected keys" in w.lower()], warnings
    assert set(patched) == {m.path for m in AdapterFile.open(sd35_run.files["diffusers"]).modules}
    assert not _transformer_output(pipe).allclose(base_out, atol=1e-4)


def test_example_config_loads():
    from loraregistry.train.config import TrainConfig

    config = TrainConfig.load(EXAMPLES / "train-sd35.toml")
    assert config.model.base == "stabilityai/stable-diffusion-3.5-medium"
    assert config.train.mixed_precision == "bf16" and config.train.gradient_checkpointing


def test_dora_trains_and_exports_for_diffusers(tmp_path, one_thread):  # noqa: F811
    """DoRA on an SD3.5 large transformer: the diffusers file keeps a per-row magnitude for every module and
    diffusers loads it as DoRA (kohya output, which fuses q/k/v, is refused before training: test_train_flux)."""
    from loraregistry.adapter import AdapterFile
    from loraregistry.train import train

    config = tiny_config(tmp_path, "sd35-large", network={"use_dora": True}, output={"formats": ["diffusers"]},
                         train={"steps": 2})
    (out,) = train(config, quiet=True).outputs
    adapter = AdapterFile.open(out.path)
    assert out.report.ok and adapter.network_type == "dora"
    from loraregistry.train.tiny_mmdit import tiny_mmdit_pipeline

    pipe = tiny_mmdit_pipeline("sd35-large")
    pipe.load_lora_weights(str(out.path.parent), weight_name=out.path.name, adapter_name="trained")
    dora = {n for n, m in pipe.transformer.named_modules() if "trained" in getattr(m, "lora_magnitude_vector", {})}
    assert dora == {m.path for m in adapter.modules}
