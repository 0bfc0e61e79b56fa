"""``verify --base`` on an SD3 / FLUX.1 single file under its original names (BFL bare, ComfyUI with text encoders)
reads the same modules as the diffusers folder of the same model, so every LoRA format gets the same verdict against
either: kohya and BFL on the fused qkv / linear1, peft (and DoRA) and XLabs on the diffusers modules it splits into.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loraregistry.safetensors_io import write_safetensors
from loraregistry.verify import load_base, verify
from tests.test_ops_bake_mmdit import _numpy, loras, save_folder, single_file, tiny  # noqa: F401 (loras: fixture)

COMFY = "model.diffusion_model."
LAYOUTS = [("flux", ""), ("flux", COMFY), ("sd3", COMFY), ("sd3", "")]
HIDDEN = 16  # FLUX_TINY / SD3_TINY: 2 heads x 8

_CLIP = {"text_model.encoder.layers.0.self_attn.q_proj.weight": (8, 8),
         "text_model.encoder.layers.0.mlp.fc1.weight": (16, 8),
         "text_model.final_layer_norm.weight": (8,),
         "text_model.embeddings.token_embedding.weight": (32, 8)}
_T5 = {"encoder.block.0.layer.0.SelfAttention.q.weight": (8, 8),
       "encoder.block.0.layer.1.DenseReluDense.wi.weight": (16, 8),
       "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, 2),
       "shared.weight": (32, 8)}
# ComfyUI's text encoder prefix -> (tensors, diffusers component) per family
TEXT_ENCODERS = {"flux": {"clip_l": (_CLIP, "text_encoder"), "t5xxl": (_T5, "text_encoder_2")},
                 "sd3": {"clip_l": (_CLIP, "text_encoder"), "clip_g": (_CLIP, "text_encoder_2"),
                         "t5xxl": (_T5, "text_encoder_3")}}
# 2-D weights that are no Linear: a folder lists them (it reads every 2-D weight), the single-file reader does not
NOT_LINEAR = ("embeddings.token_embedding", "shared", "relative_attention_bias")


def _zeros(shape) -> np.ndarray:
    return np.zeros(shape, np.float32)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """(family, prefix) -> (single file, equivalent diffusers folder); the ComfyUI layout carries text encoders."""
    found = {}
    for family in ("flux", "sd3"):
        state = _numpy(tiny(family).state_dict())
        for prefix in ("", COMFY):
            root = tmp_path_factory.mktemp(f"{family}-{prefix or 'bfl'}")
            folder = save_folder(family, tiny(family), root / "folder")
            tensors = single_file(family, state, prefix)
            if prefix:
                index = json.loads((folder / "model_index.json").read_text())
                for head, (names, component) in TEXT_ENCODERS[family].items():
                    tensors |= {f"text_encoders.{head}.transformer.{name}": _zeros(shape)
                                for name, shape in names.items()}
                    (folder / component).mkdir()
                    write_safetensors(folder / component / "model.safetensors",
                                      {name: _zeros(shape) for name, shape in names.items()})
                    index[component] = ["transformers", "T5EncoderModel" if head == "t5xxl" else "CLIPTextModel"]
                (folder / "model_index.json").write_text(json.dumps(index))
            write_safetensors(root / "model.safetensors", tensors)
            found[family, prefix] = root / "model.safetensors", folder
    return found


def _lora(path: Path, modules: dict[str, tuple[int, int]], *, seed: int = 0) -> Path:
    """A kohya/XLabs-style file: name -> (out, in) for plain down/up factors (rank 2), kohya names with an alpha."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, (out, inn) in modules.items():
        down, up = ("down", "up") if ".processor." in name else ("lora_down", "lora_up")
        tensors[f"{name}.{down}.weight"] = rng.normal(0, 0.1, (2, inn)).astype("f4")
        tensors[f"{name}.{up}.weight"] = rng.normal(0, 0.1, (out, 2)).astype("f4")
        if name.startswith("lora_"):
            tensors[f"{name}.alpha"] = np.array(2.0, "f4")
    write_safetensors(path, tensors)
    return path


def _xlabs(path: Path) -> Path:
    """XLabs' processor LoRAs: double blocks' qkv (three targets) and proj, single blocks' qkv (three of linear1's
    four targets) and proj (linear2)."""
    modules = {}
    for i in range(2):
        for name, out, inn in (("qkv_lora1", 3 * HIDDEN, HIDDEN), ("qkv_lora2", 3 * HIDDEN, HIDDEN),
                               ("proj_lora1", HIDDEN, HIDDEN), ("proj_lora2", HIDDEN, HIDDEN)):
            modules[f"double_blocks.{i}.processor.{name}"] = (out, inn)
        for name, out, inn in (("qkv_lora", 3 * HIDDEN, HIDDEN), ("proj_lora", HIDDEN, 5 * HIDDEN)):
            modules[f"single_blocks.{i}.processor.{name}"] = (out, inn)
    return _lora(path, modules)


def _text_encoder_lora(family: str, path: Path) -> Path:
    """kohya's text encoder modules (te1 CLIP-L, te2 CLIP-G, te3 T5) next to one transformer module that tells the
    family."""
    block = "double_blocks_0_img_attn_proj" if family == "flux" else "joint_blocks_0_x_block_attn_proj"
    modules = {f"lora_unet_{block}": (HIDDEN, HIDDEN),
               "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (8, 8),
               "lora_te1_text_model_encoder_layers_0_mlp_fc1": (16, 8),
               "lora_te3_encoder_block_0_layer_0_SelfAttention_q": (8, 8),
               "lora_te3_encoder_block_0_layer_1_DenseReluDense_wi": (16, 8)}
    if family == "sd3":
        modules["lora_te2_text_model_encoder_layers_0_self_attn_q_proj"] = (8, 8)
    return _lora(path, modules)


def _adapter(kind: str, family: str, loras, tmp_path: Path) -> Path:  # noqa: F811 (loras: the fixture's value)
    if kind == "xlabs":
        return _xlabs(tmp_path / "xlabs.safetensors")
    if kind == "text-encoders":
        return _text_encoder_lora(family, tmp_path / "te.safetensors")
    return loras[family][kind]


def verdict(report, base: Path) -> dict:
    """Everything verify says but which base file it read: the base's path is spelled alike in both."""
    out = report.to_dict()
    del out["path"], out["requested_base"]
    for f in out["findings"]:
        f["message"] = f["message"].replace(str(base.resolve()), "BASE")
    return out


@pytest.mark.parametrize("family,prefix", LAYOUTS, ids=[f"{f}-{'comfy' if p else 'bare'}" for f, p in LAYOUTS])
def test_single_file_reads_the_folders_modules(family, prefix, bases):
    """The transformer's modules are the folder's, fused weights as their diffusers targets; the text encoders are
    the folder's Linears (no embedding tables)."""
    single, folder = bases[family, prefix]
    got, want = load_base(str(single)).fingerprint.modules, load_base(str(folder)).fingerprint.modules
    assert {k: v for k, v in got.items() if k.component == "transformer"} == \
           {k: v for k, v in want.items() if k.component == "transformer"}
    assert not any("{" in k.path for k in got)
    text = {k: v for k, v in want.items() if k.component != "transformer"}
    assert {k: v for k, v in got.items() if k.component != "transformer"} == \
           {k: v for k, v in text.items() if not k.path.endswith(NOT_LINEAR)}
    assert bool(text) == bool(prefix)


CASES = [("flux", "", k) for k in ("kohya", "bfl", "peft", "dora", "xlabs")] + \
        [("flux", COMFY, k) for k in ("kohya", "peft", "text-encoders")] + \
        [("sd3", COMFY, k) for k in ("kohya", "bfl", "peft", "dora", "text-encoders")] + \
        [("sd3", "", k) for k in ("kohya", "peft")]


@pytest.mark.parametrize("family,prefix,kind", CASES, ids=[f"{f}-{'comfy' if p else 'bare'}-{k}" for f, p, k in CASES])
def test_every_format_gets_the_folders_verdict(family, prefix, kind, bases, loras, tmp_path):  # noqa: F811
    single, folder = bases[family, prefix]
    adapter = _adapter(kind, family, loras, tmp_path)
    against_single, against_folder = verify(adapter, base=str(single)), verify(adapter, base=str(folder))
    assert against_single.requested_base == str(single.resolve())
    assert against_single.ok and against_single.fitted == against_single.modules > 0, \
        [f.message for f in against_single.findings]
    assert verdict(against_single, single) == verdict(against_folder, folder)


WRONG = {  # a LoRA for a wider model: each names its module and delta shape
    "kohya-fused": ("flux", {"lora_unet_double_blocks_0_img_attn_qkv": (96, 32)}),
    "kohya-linear1": ("flux", {"lora_unet_single_blocks_1_linear1": (3 * HIDDEN + 64, 2 * HIDDEN)}),
    "xlabs-qkv": ("flux", {"single_blocks.0.processor.qkv_lora": (3 * HIDDEN, 2 * HIDDEN)}),
    "kohya-sd3-qkv": ("sd3", {"lora_unet_joint_blocks_1_context_block_attn_qkv": (3 * HIDDEN, 3 * HIDDEN)}),
    "kohya-t5": ("sd3", {"lora_unet_joint_blocks_0_x_block_attn_proj": (HIDDEN, HIDDEN),
                         "lora_te3_encoder_block_0_layer_0_SelfAttention_q": (8, 12)}),
}


@pytest.mark.parametrize("case", sorted(WRONG))
def test_a_wrong_shape_is_caught_against_the_single_file(case, bases, tmp_path):
    family, modules = WRONG[case]
    single, folder = bases[family, COMFY]
    adapter = _lora(tmp_path / "wide.safetensors", modules)
    against_single = verify(adapter, base=str(single))
    assert not against_single.ok and against_single.fitted == against_single.modules - 1
    assert [f.name for f in against_single.findings if f.name == "shape-mismatch"] == ["shape-mismatch"]
    assert verdict(against_single, single) == verdict(verify(adapter, base=str(folder)), folder)


def test_reading_a_single_file_base_imports_no_numpy(bases):
    """The header-level path: verify --base on a FLUX single file loads no numpy, torch or diffusers."""
    code = ("import sys; from loraregistry.verify import load_base; base = load_base(sys.argv[1]); "
            "assert len(base.fingerprint.modules) > 40, base; "
            "heavy = [m for m in ('numpy', 'torch', 'diffusers') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code, str(bases["flux", COMFY][0])], check=True)
