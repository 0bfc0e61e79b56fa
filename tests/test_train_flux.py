"""FLUX.1 LoRA training on tiny seeded pipelines (CPU, 32 px): the flow-matching pieces against diffusers' own,
one short run whose loss falls, and its two exports checked by the tools that read them: ``verify --strict``
against the tiny base, diffusers' loader (0 missing / unexpected keys, the transformer's output changes),
InvokeAI's FLUX kohya converter (its fused ``qkv`` deltas equal the trained q/k/v deltas) and ``network.init_from``
(step 0 is the file's delta)."""

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


# --- flow-matching pieces ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 16, 4, 4), (2, 16, 8, 6)])
def test_packing_and_image_ids_match_flux_pipeline(shape):
    import torch
    from diffusers import FluxPipeline

    from loraregistry.train.flow import image_ids, pack_latents

    latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    b, c, h, w = shape
    assert torch.equal(pack_latents(latents), FluxPipeline._pack_latents(latents, b, c, h, w))
    assert torch.equal(image_ids(h, w, "cpu", torch.float32),
                       FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32))


def _sigmas(arch: str, count: int = 4000, seed: int = 0, **flow):
    import torch

    from loraregistry.train.config import FlowConfig
    from loraregistry.train.flow import sample_sigmas
    from loraregistry.train.tiny_mmdit import family_of, tiny_scheduler

    parts = SimpleNamespace(architecture=SimpleNamespace(family=family_of(arch)), noise_scheduler=tiny_scheduler(arch))
    config = SimpleNamespace(flow=FlowConfig(**flow))
    return sample_sigmas(parts, config, count, torch.Generator().manual_seed(seed)).numpy()


# (arch, flow settings, expected median, expected mean): the statistics follow from the densities, not from the code
SIGMA_CASES = [
    # FLUX: uniform u, the scheduler's unshifted sigmas (dev shifts by resolution at inference only)
    ("flux1-dev", {}, 0.5, 0.5),
    # SD3: logit-normal u (median 0.5) through the scheduler's static shift 3: 3*0.5 / (1 + 2*0.5)
    ("sd35-medium", {}, 0.75, None),
    # kohya's discrete_flow_shift on uniform u: E[3u / (1 + 2u)] = 1.5 - 0.75 ln 3
    ("flux1-dev", {"shift": 3.0}, 0.75, 1.5 - 0.75 * np.log(3)),
    # logit-normal with mean 1 (no shift on FLUX): median sigmoid(1)
    ("flux1-schnell", {"timestep_sampling": "logit_normal", "logit_mean": 1.0}, 1 / (1 + np.exp(-1.0)), None),
]


@pytest.mark.parametrize("arch, flow, median, mean", SIGMA_CASES)
def test_sigma_sampling_follows_its_density(arch, flow, median, mean):
    sigmas = _sigmas(arch, **flow)
    assert sigmas.min() > 0 and sigmas.max() <= 1
    assert abs(np.median(sigmas) - median) < 0.03
    if mean is not None:
        assert abs(sigmas.mean() - mean) < 0.02
    np.testing.assert_array_equal(sigmas, _sigmas(arch, **flow))  # the generator decides every draw
    assert not np.array_equal(sigmas, _sigmas(arch, seed=1, **flow))


def test_mode_sampling_favours_the_middle():
    sigmas = _sigmas("flux1-dev", timestep_sampling="mode")
    uniform = _sigmas("flux1-dev")
    middle = lambda s: np.mean(np.abs(s - 0.5) < 0.25)  # noqa: E731
    assert sigmas.min() > 0 and sigmas.max() <= 1 and middle(sigmas) > middle(uniform) + 0.05


# --- one run, shared ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flux_run(tmp_path_factory):
    from loraregistry.train import train

    tmp = tmp_path_factory.mktemp("flux-run")
    with torch_one_thread():
        config = tiny_config(tmp, "flux1-dev", optim={"lr": 1e-2, "scheduler": "constant"},
                             train={"steps": STEPS, "batch_size": 2, "seed": 7}, output={"dtype": "fp32"})
        result = train(config, quiet=True)
    return SimpleNamespace(result=result, config=config,
                           files={o.format: o.path for o in result.outputs}, base=Path(result.verify_base))


def test_loss_falls_and_metadata_tells_the_run(flux_run):
    from loraregistry.adapter import AdapterFile

    losses = [r["loss"] for r in flux_run.result.fit.losses]
    assert len(losses) == STEPS
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.92 * first, (first, last)
    meta = AdapterFile.open(flux_run.files["kohya"]).metadata
    assert flux_run.result.architecture == meta.base.architecture == "flux1-dev"
    assert meta.base.prediction_type == "flow" and meta.network.components == ["transformer"]
    assert meta.network.rank == 4 and meta.training.steps == STEPS
    params = meta.provenance.params
    assert (params["timestep_sampling"], params["guidance_scale"], params["max_sequence_length"]) == \
           ("uniform", 3.5, 64)  # the tiny T5 tokenizer caps dev's 512


def test_exports_pass_verify_strict_against_the_tiny_base(flux_run):
    from safetensors import safe_open

    for fmt, path in flux_run.files.items():
        report = verify(path, base=str(flux_run.base))
        assert report.ok and not [f for f in report.findings if f.severity != "info"], (fmt, report.findings)
    with safe_open(str(flux_run.files["kohya"]), "np") as f:
        keys = list(f.keys())
        qkv = f.get_tensor("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight")
        linear1 = f.get_tensor("lora_unet_single_blocks_0_linear1.lora_down.weight")
    assert all(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in keys)
    assert qkv.shape[0] == 3 * 4 and linear1.shape[0] == 4 * 4  # q, k, v (and FLUX's MLP) at rank 4 each


def _load_with_diffusers(path: Path):
    return mmdit_diffusers_load(path, "flux1-dev")


def _transformer_output(pipe):
    import torch

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn((1, 16, 64), generator=gen)
    text = torch.randn((1, 8, pipe.transformer.config.joint_attention_dim), generator=gen)
    pooled = torch.randn((1, pipe.transformer.config.pooled_projection_dim), generator=gen)
    with torch.no_grad():
        return pipe.transformer(hidden_states=hidden, encoder_hidden_states=text, pooled_projections=pooled,
                                timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
                                img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), return_dict=False)[0]


def test_diffusers_loads_the_diffusers_export_with_every_module_and_it_changes_the_output(flux_run):
    from loraregistry.adapter import AdapterFile
    from loraregistry.train.tiny_mmdit import tiny_mmdit_pipeline

    base_out = _transformer_output(tiny_mmdit_pipeline("flux1-dev"))
    pipe, patched, warnings = _load_with_diffusers(flux_run.files["diffusers"])
    assert not [w for w in warnings if "missing keys" in w.lower() or "unexpected keys" in w.lower()], warnings
    trained = {m.path for m in AdapterFile.open(flux_run.files["diffusers"]).modules}
    assert set(patched) == trained
    assert not _transformer_output(pipe).allclose(base_out, atol=1e-4)
    # (diffusers' kohya FLUX converter hard-codes FLUX.1's widths for linear1, so it cannot read a tiny kohya file:
    # InvokeAI's converter checks the kohya export below; test_formats_flux runs diffusers' on real shapes)


def _peft_delta(module, adapter: str):
    return module.get_delta_weight(adapter).detach().double().numpy()


def test_invokeai_flux_kohya_conversion_reads_the_trained_deltas(flux_run):
    import torch
    from safetensors.torch import load_file

    from tests.oracle_invokeai import invokeai

    invokeai()  # InvokeAI installed without its dependencies: the harness stands in for three of them
    try:
        from invokeai.backend.patches.lora_conversions import flux_kohya_lora_conversion_utils as kohya
    except ImportError as exc:  # its FLUX modules may want torchvision, which is not installed everywhere
        pytest.skip(f"InvokeAI's FLUX kohya conversion cannot be imported here: {exc}")
    state = load_file(str(flux_run.files["kohya"]))
    assert kohya.is_state_dict_likely_in_flux_kohya_format(state)
    patch = kohya.lora_model_from_flux_kohya_state_dict(state)
    _, patched, _ = _load_with_diffusers(flux_run.files["diffusers"])
    checked = 0
    for fused, block, targets in (("double_blocks.{i}.img_attn.qkv", "transformer_blocks.{i}.attn",
                                   ("to_q", "to_k", "to_v")),
                                  ("double_blocks.{i}.txt_attn.qkv", "transformer_blocks.{i}.attn",
                                   ("add_q_proj", "add_k_proj", "add_v_proj")),
                                  ("single_blocks.{i}.linear1", "single_transformer_blocks.{i}",
                                   ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"))):
        for i in range(2):  # the tiny model has two blocks of each kind
            layer = patch.layers[f"lora_transformer-{fused.format(i=i)}"]
            want = np.concatenate([_peft_delta(patched[f"{block.format(i=i)}.{t}"], "trained") for t in targets])
            orig = torch.zeros(want.shape)
            got = layer.get_parameters({"weight": orig}, weight=1.0)["weight"].double().numpy()
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
            checked += 1
    assert checked == 6


@pytest.mark.parametrize("base", ["tiny", "saved folder, bf16"])
def test_init_from_the_kohya_export_starts_at_its_delta(flux_run, tmp_path, base):
    """Also on a base loaded in bf16 for mixed precision: the LoRA factors stay float32, so nothing rounds."""
    from loraregistry.train import build_components
    from loraregistry.train.config import from_dict

    settings = tiny_settings(tmp_path, "flux1-dev")
    settings["network"] = {"init_from": str(flux_run.files["kohya"])}  # its ranks and alphas decide
    if base != "tiny":
        settings["model"]["base"] = str(flux_run.base)
        settings["train"]["mixed_precision"] = "bf16"
    parts = build_components(from_dict(settings))
    _, patched, _ = _load_with_diffusers(flux_run.files["diffusers"])
    model = parts.trained["transformer"]
    started = {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert set(started) == set(patched)
    for name, module in started.items():
        np.testing.assert_allclose(_peft_delta(module, "default"), _peft_delta(patched[name], "trained"),
                                   rtol=1e-6, atol=1e-9, err_msg=name)


# --- bases, settings and mistakes ----------------------------------------------------------------------------------


def test_a_saved_flux_folder_loads_as_a_real_base(flux_run, tmp_path):
    """The diffusers-folder path real bases take (FluxPipeline's model_index.json), here on the tiny base the run
    saved for verify."""
    from loraregistry.train import TrainingSet, build_components, scan_dataset
    from loraregistry.train.cache import TensorCache

    import torch

    parts = build_components(tiny_config(tmp_path, model={"base": str(flux_run.base)}))
    assert parts.architecture.id == "flux1-dev" and parts.source.path == flux_run.base.resolve()
    assert type(parts.pipeline).__name__ == "FluxPipeline" and parts.text_max_length == 64
    # under mixed precision a real base loads in that dtype (FLUX.1's transformer: 24 GB, not 48), the VAE float32
    parts = build_components(tiny_config(tmp_path, model={"base": str(flux_run.base)},
                                         train={"mixed_precision": "bf16"}))
    dtypes = {name: getattr(parts.pipeline, name).dtype for name in ("transformer", "text_encoder_2", "vae")}
    assert dtypes == {"transformer": torch.bfloat16, "text_encoder_2": torch.bfloat16, "vae": torch.float32}
    # its text embeddings are cached as they come (bf16: half the disk of float32), its latents in float32
    config = tiny_config(tmp_path, model={"base": str(flux_run.base)}, train={"mixed_precision": "bf16"})
    data = TrainingSet(scan_dataset(config.data), parts, config, TensorCache(config.data.cache_dir))
    data.prepare()
    assert data.text_for("").hidden.dtype == torch.bfloat16 and data.latents[0][0].dtype == torch.float32


def test_a_single_file_flux_checkpoint_is_refused_in_one_line(tmp_path):
    from loraregistry.safetensors_io import write_safetensors
    from loraregistry.train import build_components
    from loraregistry.train.errors import BaseModelError

    checkpoint = tmp_path / "flux1-dev.safetensors"
    write_safetensors(checkpoint, {"double_blocks.0.img_attn.qkv.weight": np.zeros((6, 2), np.float16)})
    with pytest.raises(BaseModelError) as info:
        build_components(tiny_config(tmp_path, model={"base": str(checkpoint)}))
    message = info.value.one_line()
    assert "\n" not in message and "FLUX.1" in message and "diffusers folder" in message, message


@pytest.mark.parametrize("arch, guidance", [("flux1-dev", True), ("flux1-schnell", False)])
def test_tiny_bases_are_detected_and_one_step_trains_every_lora_layer(tmp_path, one_thread, arch,  # noqa: F811
                                                                       guidance):
    import torch

    from loraregistry.train import TrainingSet, build_components, scan_dataset, train_step
    from loraregistry.train.cache import TensorCache

    config = tiny_config(tmp_path, arch, network={"transformer_targets": "attn"})
    parts = build_components(config)
    assert parts.architecture.id == arch and list(parts.trained) == ["transformer"]
    assert bool(parts.denoiser.config.guidance_embeds) is guidance
    names = parts.target_modules["transformer"]
    assert names and all(n.startswith(("transformer_blocks.", "single_transformer_blocks.")) for n in names)
    data = TrainingSet(scan_dataset(config.data), parts, config, TensorCache(config.data.cache_dir))
    data.prepare()
    loss = train_step(data.batch(0, 0, [0, 1]), parts, config, torch.Generator().manual_seed(0))
    loss.backward()
    grads = {n: p.grad for n, p in parts.denoiser.named_parameters() if p.requires_grad}
    assert torch.isfinite(loss) and grads
    assert all(g is not None for g in grads.values())
    lora_b = [g for n, g in grads.items() if "lora_B" in n]
    assert all(g.abs().sum() > 0 for g in lora_b)  # every module reaches the loss


def test_text_cache_key_holds_the_encoders_and_the_t5_length(tmp_path, one_thread):  # noqa: F811
    from loraregistry.train import TrainingSet, build_components, scan_dataset
    from loraregistry.train.cache import TensorCache

    def prepare(length: int | None) -> TensorCache:
        flow = {} if length is None else {"max_sequence_length": length}
        config = tiny_config(tmp_path, "flux1-schnell", flow=flow)
        cache = TensorCache(config.data.cache_dir)
        data = TrainingSet(scan_dataset(config.data), build_components(config), config, cache)
        data.prepare()
        assert data.text_for("").hidden.shape[0] == (length or 64)
        return cache

    captions = 4 + 1  # four images and the empty caption
    assert prepare(None).stats.encoded["text"] == captions
    assert prepare(None).stats.reused["text"] == captions
    assert prepare(16).stats.encoded["text"] == captions  # another length is another entry


MISTAKES = [
    ("unet-component", "flux1-dev", {"network": {"components": ["unet"]}}, "has no UNet"),
    ("text-encoder", "flux1-dev", {"network": {"components": ["transformer", "text_encoder"]}},
     "trains its transformer only"),
    ("conv-rank", "flux1-dev", {"network": {"conv_rank": 4}}, "no convolutions"),
    ("guidance-on-schnell", "flux1-schnell", {"flow": {"guidance_scale": 1.0}}, "no guidance input"),
    ("min-snr", "flux1-dev", {"train": {"min_snr_gamma": 5.0}}, "train.min_snr_gamma"),
    ("prediction-type", "flux1-dev", {"model": {"prediction_type": "v"}}, "model.prediction_type"),
    ("odd-bucket-step", "flux1-dev", {"data": {"bucket_step": 10}}, "data.bucket_step must be a multiple of 4"),
    ("long-t5", "flux1-dev", {"flow": {"max_sequence_length": 300}}, "flow.max_sequence_length"),
    ("fp8-without-mixed-precision", "flux1-dev", {"model": {"fp8_base": True}}, "model.fp8_base"),
    ("dora-to-kohya", "flux1-dev", {"network": {"use_dora": True}}, "DoRA modules are not fused"),
    ("flow-on-a-unet", "sd1", {"flow": {"shift": 3.0}}, "flow.shift"),
    ("transformer-on-a-unet", "sd1", {"network": {"components": ["transformer"]}}, "has a UNet"),
]


@pytest.mark.parametrize("case, arch, sections, phrase", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistakes_are_one_line_config_errors(tmp_path, case, arch, sections, phrase):
    from loraregistry.train import build_components
    from loraregistry.train.errors import ConfigError

    config = tiny_config(tmp_path, arch, **sections)
    with pytest.raises(ConfigError) as info:
        build_components(config)
    message = info.value.one_line()
    assert "\n" not in message and phrase in message, message


def test_without_buckets_the_bucket_step_does_not_matter(tmp_path):
    from loraregistry.train import build_components

    parts = build_components(tiny_config(tmp_path, "flux1-schnell", data={"buckets": False, "bucket_step": 10}))
    assert parts.architecture.id == "flux1-schnell"  # 32 px squares patch; the step of 10 is never used


def test_fp8_base_bf16_and_gradient_checkpointing_run(tmp_path, one_thread):  # noqa: F811
    import torch

    from loraregistry.train import build_components, train

    config = tiny_config(tmp_path, "flux1-schnell", model={"fp8_base": True}, output={"formats": ["kohya"]},
                         train={"steps": 2, "mixed_precision": "bf16", "gradient_checkpointing": True})
    parts = build_components(config)  # float8 from the start: the base reaches the GPU at half the bf16 size
    assert parts.denoiser_io()[1] == parts.compute_dtype == torch.bfloat16
    dtypes = {n: p.dtype for n, p in parts.denoiser.named_parameters()}
    assert dtypes["transformer_blocks.0.attn.to_q.base_layer.weight"] == torch.float8_e4m3fn
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    # the T5 too (it only encodes captions here), but for wo, whose dtype T5 casts its input to
    t5 = dict(parts.pipeline.text_encoder_2.named_parameters())
    assert parts.fp8_stored == ("transformer", "text_encoder_2")
    assert t5["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].dtype == torch.float8_e4m3fn
    assert t5["encoder.block.0.layer.1.DenseReluDense.wo.weight"].dtype == torch.bfloat16
    assert parts.content_keys["text_encoder_2"].endswith(":fp8")  # its embeddings are cached apart
    result = train(config, quiet=True)
    assert result.outputs[0].report.ok and all(np.isfinite(r["loss"]) for r in result.fit.losses)
    assert len(result.fit.losses) == 2


def test_example_config_loads():
    from loraregistry.train.config import TrainConfig

    config = TrainConfig.load(EXAMPLES / "train-flux.toml")
    assert config.model.base == "black-forest-labs/FLUX.1-dev" and config.model.fp8_base
    assert config.train.mixed_precision == "bf16" and config.train.gradient_checkpointing
