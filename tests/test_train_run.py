"""End to end on tiny SD1 / SD2-v / SDXL pipelines (CPU, 32 px, a few steps): the loss falls, the output verifies
clean, carries the run's metadata, loads in diffusers with every module patched and changes the UNet output."""

from __future__ import annotations

import json

import pytest

from loraregistry.adapter import AdapterFile
from loraregistry.train.tiny import tiny_pipeline
from loraregistry.verify import verify

from .test_train_support import copy_dataset, diffusers_load, one_thread, tiny_config  # noqa: F401 - fixture

pytestmark = pytest.mark.slow

TINY = {"sd1": "sd1", "sd2-v": "sd2-v", "sdxl": "sdxl"}
EXPECTED_ARCH = {"sd1": "sd1", "sd2-v": "sd2-768-v", "sdxl": "sdxl-base"}


def _unet_output(pipe, arch: str):
    import torch

    gen = torch.Generator().manual_seed(0)
    latents = torch.randn((1, 4, 16, 16), generator=gen)
    hidden = pipe.unet.config.cross_attention_dim
    text = torch.randn((1, 77, hidden), generator=gen)
    kwargs = {}
    if arch == "sdxl":
        pooled = pipe.text_encoder_2.config.projection_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn((1, pooled), generator=gen),
                                       "time_ids": torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]])}
    with torch.no_grad():
        return pipe.unet(latents, torch.tensor([500]), text, **kwargs).sample


@pytest.mark.parametrize("arch, network", [
    ("sd1", {}),
    ("sd2-v", {"components": ["unet", "text_encoder"], "conv_rank": 2, "conv_alpha": 1.0}),
    ("sdxl", {"components": ["unet", "text_encoder", "text_encoder_2"], "unet_targets": "transformer"}),
    ("sd1", {"components": ["unet", "text_encoder"], "use_dora": True}),
])
def test_trained_adapter_verifies_loads_in_diffusers_and_changes_the_unet(tmp_path, one_thread, arch,  # noqa: F811
                                                                         network):
    from loraregistry.train import train

    config = tiny_config(tmp_path, arch, network=network, train={"steps": 3, "min_snr_gamma": 5.0,
                                                                 "noise_offset": 0.05})
    result = train(config, quiet=True)
    assert result.architecture == EXPECTED_ARCH[arch]
    assert {o.format for o in result.outputs} == {"kohya", "diffusers"}
    for out in result.outputs:
        report = verify(out.path)  # against the shipped fingerprints: tiny shapes fit none (LRG200) ...
        assert report.format == ("kohya" if out.format == "kohya" else "peft")
        assert out.report.ok, [f.code for f in out.report.findings]  # ... so export verified against the tiny base
        warnings = {f.code for f in out.report.findings if f.severity == "warning"}
        assert warnings == set(), out.report.findings  # what lorareg train writes passes verify --strict
        adapter = AdapterFile.open(out.path)
        meta = adapter.metadata
        assert meta.base.architecture == EXPECTED_ARCH[arch]
        assert meta.base.prediction_type == ("v" if arch == "sd2-v" else "epsilon")
        assert meta.trigger_words == ["lrgshape"] and meta.license == "cc0-1.0"
        assert meta.network.rank == 4 and meta.network.alpha == 4.0
        assert meta.network.type == ("dora" if network.get("use_dora") else
                                     "locon" if network.get("conv_rank") else "lora")
        assert sorted(meta.network.components) == sorted(network.get("components", ["unet"]))
        assert meta.training.steps == 3 and meta.training.dataset_size == 4
        assert meta.training.dataset_hash == result.dataset["dataset_hash"]
        assert meta.training.tool == "lorareg" and meta.training.min_snr_gamma == 5.0
        assert meta.provenance.operation == "train"
        assert adapter.components == tuple(sorted(network.get("components", ["unet"]))) or \
            set(adapter.components) == set(network.get("components", ["unet"]))
        file_modules = {c: sum(1 for m in adapter.modules if m.component == c) for c in adapter.components}
        pipe, patched, warnings = diffusers_load(out.path.parent if out.format == "diffusers" else out.path, arch)
        assert not [w for w in warnings if "unexpected keys" in w.lower() or "missing keys" in w.lower()], warnings
        assert {c: n for c, n in patched.items() if n} == file_modules  # every module of the file, nothing else
        base_out = _unet_output(tiny_pipeline(arch), arch)
        assert not _unet_output(pipe, arch).allclose(base_out)
    summary = json.loads((result.run_dir / "run.json").read_text())
    assert summary["steps"] == 3 and (result.run_dir / "loss.csv").is_file() and (result.run_dir / "loss.png").is_file()


def test_loss_falls_on_a_memorizable_dataset(tmp_path, one_thread):  # noqa: F811
    """Two images, many steps: the loss on a fixed set of (noise, timestep) draws drops well below its start."""
    import torch
    from accelerate import Accelerator

    from loraregistry.train import (
        Trainer,
        TrainingSet,
        build_components,
        scan_dataset,
        train_step,
    )
    from loraregistry.train.cache import TensorCache

    copy_dataset(tmp_path / "data", 2)
    config = tiny_config(tmp_path, network={"rank": 8, "alpha": 8.0, "unet_targets": "transformer"},
                         optim={"lr": 2e-2, "max_grad_norm": None}, train={"steps": 40, "batch_size": 2})
    parts = build_components(config)
    data = TrainingSet(scan_dataset(config.data), parts, config, TensorCache(config.data.cache_dir))
    data.prepare()
    batch = data.batch(0, 0, [0, 1])

    def fixed_loss() -> float:
        gen = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return sum(float(train_step(batch, parts, config, gen)) for _ in range(16)) / 16

    before = fixed_loss()
    fit = Trainer(config, parts, data, run_dir=tmp_path / "run", accelerator=Accelerator(), quiet=True).fit()
    after = fixed_loss()
    assert after < 0.8 * before, (before, after)
    first, last = fit.losses[:10], fit.losses[-10:]
    assert sum(r["loss"] for r in last) < sum(r["loss"] for r in first)


def test_samples_grid_and_dora(tmp_path, one_thread):  # noqa: F811
    from PIL import Image

    from loraregistry.train import train
    from loraregistry.train.samples import read_cells

    config = tiny_config(tmp_path, network={"use_dora": True}, output={"formats": ["diffusers"]},
                         train={"steps": 2, "sample_every": 1, "sample_prompts": ["lrgshape, a", "b"],
                                "sample_seeds": [1, 2, 3], "sample_steps": 2})
    result = train(config, quiet=True)
    grids = sorted((result.run_dir / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step-00000001.png", "step-00000002.png"]
    assert Image.open(grids[0]).width == 3 * 32  # 3 seeds a row; labels add height (test_train_feedback.py)
    assert [(c["row"], c["seed"]) for c in read_cells(grids[0])["cells"]] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2),
                                                                              (1, 3)]
    (out,) = result.outputs
    assert out.report.ok and AdapterFile.open(out.path).network_type == "dora"
    _, patched, _ = diffusers_load(out.path.parent, "sd1")
    assert patched["unet"] == sum(1 for _ in AdapterFile.open(out.path).modules)


def test_missing_optional_optimizer_is_one_line(tmp_path, one_thread):  # noqa: F811
    pytest.importorskip("torch")
    from loraregistry.train import train
    from loraregistry.train.errors import MissingDependency

    for name, package in (("adamw8bit", "bitsandbytes"), ("prodigy", "prodigyopt")):
        try:
            __import__(package)
            continue
        except ImportError:
            pass
        config = tiny_config(tmp_path, optim={"optimizer": name})
        with pytest.raises(MissingDependency, match=f"needs {package}"):
            train(config, quiet=True)


def test_epochs_accumulation_bf16_and_gradient_checkpointing(tmp_path, one_thread):  # noqa: F811
    """The less common loop settings run end to end: epochs (4 images, batch 2 -> 2 batches an epoch) with
    accumulation 2 is one optimizer step per epoch; bf16 autocast and gradient checkpointing on the CPU."""
    from loraregistry.train import train

    config = tiny_config(tmp_path, network={"components": ["unet", "text_encoder"]},
                         optim={"grad_accumulation": 2, "scheduler": "cosine", "warmup_steps": 1},
                         train={"steps": None, "epochs": 2, "mixed_precision": "bf16",
                                "gradient_checkpointing": True, "sample_prompts": ["lrgshape"], "sample_steps": 2},
                         output={"formats": ["kohya"]})
    result = train(config, quiet=True)
    assert (result.fit.steps, result.fit.epochs) == (2, 2)
    meta = AdapterFile.open(result.outputs[0].path).metadata
    assert (meta.training.epochs, meta.training.mixed_precision, meta.training.steps) == (2, "bf16", 2)
    assert result.outputs[0].report.ok
    assert [p.name for p in result.fit.samples] == ["step-00000002.png"]  # samples once at the end
