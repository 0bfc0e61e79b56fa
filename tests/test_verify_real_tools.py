"""Oracle at real shapes: adapters written by the real tools over full-size SD1, SD2 and SDXL models verify clean.

Each base is built from ``loraregistry/architectures/configs`` on the meta device (``architectures.build``): every
module has its true shape and no weight memory. The real tools inject their adapters (peft via diffusers'
``add_adapter``, peft ``get_peft_model``, lycoris-lora's kohya network); only the adapter parameters are
materialized (seeded noise, rank 2), and the real writers save them: diffusers ``save_lora_weights``, peft
``save_pretrained``, diffusers ``convert_state_dict_to_kohya`` + ``safetensors.torch.save_file``, lycoris
``save_weights``. Every file must verify without errors, detect its architecture (SD2's 512 / 768-v variants
share shapes: an info unless declared), and report the right format, rank and alpha (against
``inspect_adapter``).

Targets: every Linear of every Transformer2DModel (kohya's default set: SD1/SD2 192, SDXL 722 UNet modules) and
the text encoders' attention for peft/diffusers; lycoris' ``attn-mlp`` preset (attention + MLP, UNet and text
encoders). The module takes 20-40 s on 2 cores (the files are written once per module, per xdist worker),
most of it imports and lycoris wrapping; hence `slow`.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from loraregistry.inspection import inspect_adapter
from loraregistry.verify import verify

pytestmark = pytest.mark.slow
for _module in ("torch", "diffusers", "peft", "transformers", "lycoris"):
    pytest.importorskip(_module)

RANK, ALPHA = 2, 4  # scale 2: an alpha that differs from the rank proves alpha is read, not assumed
LYCORIS_ALPHA = 1.0
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
PIPELINES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline",
             "sdxl-base": "StableDiffusionXLPipeline"}
DETECTED = {"sd1": ("sd1", ("sd1",)), "sd2": (None, ("sd2-512", "sd2-768-v")), "sdxl-base": ("sdxl-base", ("sdxl-base",))}
UNET_MODULES = {"sd1": 192, "sd2": 192, "sdxl-base": 722}  # Transformer2DModel Linears (FORMATS.md)


@dataclass(frozen=True)
class Written:
    """One file written by a real tool, and what verify and inspect must say about it."""

    name: str
    arch: str
    path: Path
    format: str
    network_type: str
    alpha: float  # the alpha a loader uses for most modules
    alpha_stored: bool  # alpha tensors in the file (else: lora_adapter_metadata or alpha = rank)
    codes: tuple[str, ...] = ()  # the findings expected besides missing trigger words / license
    declared: str | None = None


def _build(arch: str):
    from loraregistry.architectures.build import build_architecture

    return build_architecture(arch)


def _materialize(model, seed: int, marker: str) -> None:
    """Give every adapter parameter (name contains ``marker``) seeded fp16 noise on the CPU; tools zero-init one
    factor (a no-op delta) and, on a meta model, create the rest on meta."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    owners = [(f"{prefix}.{name}", module, name) for prefix, module in model.named_modules()
              for name, p in module._parameters.items() if p is not None]
    for full, module, name in sorted(owners, key=lambda o: o[0]):
        if marker in full:
            shape = module._parameters[name].shape
            noise = torch.randn(shape, generator=generator) * 0.01
            module._parameters[name] = torch.nn.Parameter(noise.to(torch.float16), requires_grad=False)


def _peft_inject(arch: str, seed: int):
    from peft import LoraConfig

    from loraregistry.train.peft_attach import attach_lora

    models = _build(arch)
    for component, model in models.items():
        targets = UNET_TARGETS if component == "unet" else TE_TARGETS
        attach_lora(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets))
        _materialize(model, seed + len(component), "lora_")
    return models


def write_diffusers(arch: str, folder: Path) -> Written:
    import diffusers
    from peft.utils import get_peft_model_state_dict

    models = _peft_inject(arch, seed=1)
    kwargs = {}
    for component, model in models.items():
        kwargs[f"{component}_lora_layers"] = get_peft_model_state_dict(model)
        kwargs[f"{component}_lora_adapter_metadata"] = model.peft_config["default"].to_dict()
    out = folder / f"{arch}_diffusers"
    getattr(diffusers, PIPELINES[arch]).save_lora_weights(str(out), weight_name="lora.safetensors", **kwargs)
    return Written(f"{arch}_diffusers", arch, out / "lora.safetensors", "peft", "lora", ALPHA, False)


def write_kohya_converted(arch: str, source: Written, folder: Path) -> Written:
    """The documented route to a kohya file: lora_state_dict of a diffusers file, convert, save_file."""
    import diffusers
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import save_file

    state_dict, _ = getattr(diffusers, PIPELINES[arch]).lora_state_dict(str(source.path))
    path = folder / f"{arch}_kohya.safetensors"
    save_file(convert_state_dict_to_kohya(state_dict), str(path))
    # convert_state_dict_to_kohya writes alpha = rank (int64), whatever the source's lora_alpha was
    return Written(f"{arch}_kohya", arch, path, "kohya", "lora", float(RANK), True)


def write_peft_model(arch: str, folder: Path) -> Written:
    from peft import LoraConfig, get_peft_model

    unet = _build(arch)["unet"]
    # adapter_model.safetensors alone carries no alpha (it is in adapter_config.json): train with alpha = rank
    model = get_peft_model(unet, LoraConfig(r=RANK, lora_alpha=RANK, target_modules=UNET_TARGETS))
    _materialize(model, 3, "lora_")
    out = folder / f"{arch}_peft"
    model.save_pretrained(str(out))
    assert json.loads((out / "adapter_config.json").read_text())["r"] == RANK
    return Written(f"{arch}_peft", arch, out / "adapter_model.safetensors", "peft", "lora", float(RANK), False,
                   codes=("LRG107",))  # keys 'base_model.model.<unet path>': no component prefix


def write_lycoris(arch: str, algo: str, folder: Path, metadata: dict[str, str] | None = None) -> Written:
    import torch
    from lycoris import kohya as lycoris_kohya

    models = _build(arch)
    encoders = [models[c] for c in ("text_encoder", "text_encoder_2") if c in models]
    te = encoders if len(encoders) > 1 else encoders[0]
    # What sd-scripts does with --network_module lycoris.kohya --network_args algo=... preset=attn-mlp
    network = lycoris_kohya.create_network(1.0, RANK, LYCORIS_ALPHA, None, te, models["unet"], algo=algo,
                                           preset="attn-mlp")
    network.apply_to(te, models["unet"], apply_text_encoder=True, apply_unet=True)
    _materialize(network, 4, "")  # lycoris creates its factors on the CPU in fp32; any meta ones are replaced
    path = folder / f"{arch}_lycoris_{algo}.safetensors"
    network.save_weights(str(path), torch.float16, dict(metadata or {}))
    declared = None
    if metadata and "modelspec.architecture" in metadata:
        declared = metadata["modelspec.architecture"].split("/")[0].replace("stable-diffusion-v2-", "sd2-")
    return Written(path.stem, arch, path, "kohya", algo, LYCORIS_ALPHA, True, codes=("LRG108",), declared=declared)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Written]:
    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    folder = tmp_path_factory.mktemp("real_tools")
    files: dict[str, Written] = {}
    for arch in ("sd1", "sd2", "sdxl-base"):
        diffusers_file = write_diffusers(arch, folder)
        for w in (diffusers_file, write_kohya_converted(arch, diffusers_file, folder), write_peft_model(arch, folder),
                  write_lycoris(arch, "loha", folder), write_lycoris(arch, "lokr", folder)):
            files[w.name] = w
    (folder / "declared").mkdir()
    files["sd2_lycoris_loha_declared"] = write_lycoris("sd2", "loha", folder / "declared",
                                                      {"modelspec.architecture": "stable-diffusion-v2-768-v/lora"})
    yield files
    shutil.rmtree(folder, ignore_errors=True)


CASES = [f"{arch}_{tool}" for arch in ("sd1", "sd2", "sdxl-base")
         for tool in ("diffusers", "kohya", "peft", "lycoris_loha", "lycoris_lokr")] + ["sd2_lycoris_loha_declared"]


@pytest.mark.parametrize("name", CASES)
def test_real_tool_file_verifies_clean(written, name):
    w = written[name]
    report = verify(w.path)
    assert report.ok, [f"{f.code} {f.message}" for f in report.findings if f.severity == "error"]
    expected = {"LRG502", "LRG503", *w.codes}  # no trigger words / license: the tools write neither
    detected, candidates = DETECTED[w.arch]
    if len(candidates) > 1:  # sd2-512 and sd2-768-v fit equally: an info saying how (or whether) it was decided
        expected.add("LRG204")
        (info,) = [f for f in report.findings if f.code == "LRG204"]
        assert info.severity == "info"
        assert ("chose sd2-768-v by the declared architecture" in info.message) == (w.declared is not None)
    assert set(report.codes()) == expected, [f"{f.code} {f.message}" for f in report.findings]
    assert report.detected_architecture == (w.declared or detected) and report.candidates == candidates
    assert report.fitted == report.modules and report.format == w.format and report.network_type == w.network_type


@pytest.mark.parametrize("name", CASES)
def test_real_tool_file_rank_and_alpha(written, name):
    w = written[name]
    info = inspect_adapter(w.path, hashes=False)
    assert info["format"] == w.format and info["network_type"] == w.network_type
    network = info["metadata"]["network"]
    assert network["rank"] == RANK
    if w.alpha_stored:
        alphas = {float(a): n for a, n in info["alphas"].items()}
        assert max(alphas, key=alphas.get) == w.alpha, alphas
    else:
        assert not info["alphas"]
    assert network["alpha"] == w.alpha
    if w.format == "peft" or w.name.endswith("_kohya"):
        assert info["components"]["unet"] == UNET_MODULES[w.arch]


def test_lokr_stored_alphas(written):
    """LoKr stores the configured alpha where a factor is decomposed, alpha = dim (scale 1) where both are full."""
    for arch in ("sd1", "sd2", "sdxl-base"):
        info = inspect_adapter(written[f"{arch}_lycoris_lokr"].path, hashes=False)
        assert {float(a) for a in info["alphas"]} <= {LYCORIS_ALPHA, float(RANK)}, info["alphas"]


def test_sd1_adapter_against_sdxl_base_says_what_it_is(written):
    report = verify(written["sd1_diffusers"].path, base="sdxl-base")
    (mismatch,) = [f for f in report.findings if f.code == "LRG203"]
    assert not report.ok and report.exit_code() == 1
    assert mismatch.message.startswith("this is an sd1 adapter (all ") and "not sdxl-base" in mismatch.message
