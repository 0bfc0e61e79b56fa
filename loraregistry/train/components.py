"""``build_components(config)``: the base pipeline loaded offline, its architecture checked, LoRA injected.

Bases: ``tiny:<arch>`` (built from configs), a local diffusers folder, a single-file checkpoint (diffusers needs the
component configs for those: ``model.single_file_config``), or a Hub id that is already in the HF cache. Nothing is
ever downloaded: Hub lookups run with ``local_files_only=True``. SD1/SD2/SDXL train a UNet with a DDPM schedule;
FLUX.1 and SD3.x (``FluxPipeline`` / ``StableDiffusion3Pipeline`` folders) train their transformer with flow
matching (``flow.py``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..architectures.ids import Architecture, get
from .config import TrainConfig
from .errors import BaseModelError, ConfigError
from .tiny import is_tiny, tiny_pipeline_from_spec

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
FLOW_FAMILIES = ("flux", "sd3")  # trained with flow matching; their denoiser is the pipeline's ``transformer``
PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "FluxPipeline", "StableDiffusion3Pipeline")
# Module-name prefixes of the MMDiT blocks: transformer targets are matched inside them only
TRANSFORMER_BLOCKS = ("transformer_blocks.", "single_transformer_blocks.")
T5_ENCODER = {"flux": "text_encoder_2", "sd3": "text_encoder_3"}  # the pipeline attribute of each family's T5
# ResNet / sampler convolutions LoCon adds (kohya: ResnetBlock2D, Downsample2D, Upsample2D).
CONV_SUFFIXES = ("conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv")


@dataclass
class BaseSource:
    """Where the base came from, for metadata and for verify's ``--base``."""

    spec: str
    path: Path | None = None  # folder or file verify can read (None until a tiny base is saved)
    model_id: str | None = None  # Hub repo id
    revision: str | None = None
    sha256: str | None = None  # single-file checkpoints only


@dataclass
class Components:
    """Everything a training step and an export need. ``trained`` maps component name -> model with LoRA."""

    pipeline: Any
    architecture: Architecture
    prediction_type: str  # "epsilon", "v" or "flow"
    source: BaseSource
    noise_scheduler: Any
    trained: dict[str, Any] = field(default_factory=dict)
    target_modules: dict[str, list[str]] = field(default_factory=dict)
    conv_modules: list[str] = field(default_factory=list)  # UNet convolutions with LoCon rank/alpha
    content_keys: dict[str, str] = field(default_factory=dict)  # component -> weights key for caches
    init_adapter: Any = None  # init_from.InitAdapter when the run continues a file
    text_max_length: int | None = None  # T5 tokens per caption (FLUX / SD3)
    compute_dtype: Any = None  # under model.fp8_base: the weights are float8, the layers compute in this dtype
    fp8_stored: tuple[str, ...] = ()  # the components whose frozen weights are float8 (model.fp8_base)

    @property
    def is_flow(self) -> bool:
        """FLUX.1 / SD3.x: a transformer trained with flow matching."""
        return self.architecture.family in FLOW_FAMILIES

    @property
    def denoiser_name(self) -> str:
        return "transformer" if self.is_flow else "unet"

    @property
    def denoiser(self):
        return getattr(self.pipeline, self.denoiser_name)

    def denoiser_io(self) -> tuple[Any, Any]:
        """(device, dtype) the denoiser takes its inputs in. diffusers' ``.device`` / ``.dtype`` walk the whole model
        (5 ms each on a tiny one, a third of a CPU step); a frozen weight tells both at once."""
        frozen = next(p for p in self.denoiser.parameters() if not p.requires_grad)
        return frozen.device, self.compute_dtype or frozen.dtype

    @property
    def unet(self):
        return self.pipeline.unet

    @property
    def vae(self):
        return self.pipeline.vae

    @property
    def is_sdxl(self) -> bool:
        return self.architecture.family == "sdxl"

    def model(self, name: str):
        """The module to call in training: the trainer's wrapped copy (DDP) when it trains, else the pipeline's."""
        return self.trained[name] if name in self.trained else getattr(self.pipeline, name)

    def text_encoders(self) -> list[Any]:
        return [self.model(n) for n in TEXT_ENCODERS if getattr(self.pipeline, n, None) is not None]

    def tokenizers(self) -> list[Any]:
        names = ("tokenizer", "tokenizer_2", "tokenizer_3")
        return [getattr(self.pipeline, n) for n in names if getattr(self.pipeline, n, None) is not None]


def build_components(config: TrainConfig, *, pipeline=None) -> Components:
    """Load the base, check its architecture, inject LoRA (seeded: the same config gives the same init).

    ``pipeline``: a pipeline already in memory to train instead of loading ``model.base`` (which then only names
    it in the metadata)."""
    import torch

    if config.model.fp8_base and config.train.mixed_precision == "no":  # before loading: a real base takes minutes
        raise ConfigError("model.fp8_base needs train.mixed_precision = \"bf16\" or \"fp16\": float8 weights are "
                          "only stored, the layers compute in that dtype", hint='set train.mixed_precision = "bf16"')
    pipeline, source = load_base(config) if pipeline is None else (pipeline, BaseSource(spec=config.model.base))
    arch = detect_architecture(pipeline)
    arch = check_override(arch, config.model.architecture)
    if arch.family in FLOW_FAMILIES:
        prediction, noise_scheduler = _flow_schedule(pipeline, config, arch)
    else:
        prediction, noise_scheduler = _ddpm_schedule(pipeline, config, arch)
        if arch.family == "sd2" and config.model.architecture is None:
            arch = get("sd2-768-v" if prediction == "v" else "sd2-512")
    for name in ("unet", "transformer", "vae", *TEXT_ENCODERS):
        module = getattr(pipeline, name, None)
        if module is not None:
            module.requires_grad_(False)
    parts = Components(pipeline=pipeline, architecture=arch, prediction_type=prediction, source=source,
                       noise_scheduler=noise_scheduler)
    parts.content_keys = {name: weights_key(getattr(pipeline, name)) for name in ("vae", *TEXT_ENCODERS)
                          if getattr(pipeline, name, None) is not None}
    if parts.is_flow:
        from .flow import check_flow_config, text_length

        check_flow_config(parts, config)
        parts.text_max_length = text_length(parts, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        inject_lora(parts, config)
    if config.model.fp8_base:  # here, on the CPU: a FLUX.1 transformer reaches the GPU at 12 GB, not 24
        store_frozen_fp8(parts, frozen_dtype(config))
    dora = config.network.use_dora or (parts.init_adapter is not None and parts.init_adapter.use_dora)
    if parts.is_flow and dora and "kohya" in config.output.formats:
        # refused here, not after training: kohya's original names fuse q/k/v, and lorareg fuses plain LoRA only
        raise ConfigError(f"output.formats lists kohya, which fuses {parts.architecture.id}'s q/k/v projections, "
                          "and DoRA modules are not fused", hint='use output.formats = ["diffusers"] for DoRA')
    return parts


def _ddpm_schedule(pipeline, config: TrainConfig, arch: Architecture):
    from diffusers import DDPMScheduler

    if config.flow.model_fields_set:
        raise ConfigError(f"flow.{sorted(config.flow.model_fields_set)[0]} is set but a {arch.id} base is trained "
                          "with a noise schedule, not flow matching", hint="drop the [flow] section")
    scheduler_pred = pipeline.scheduler.config.get("prediction_type", "epsilon")
    prediction = config.model.prediction_type or ("v" if scheduler_pred == "v_prediction" else "epsilon")
    return prediction, DDPMScheduler.from_config(
        pipeline.scheduler.config, prediction_type="v_prediction" if prediction == "v" else "epsilon")


def _flow_schedule(pipeline, config: TrainConfig, arch: Architecture):
    """The base's own flow-matching scheduler (its shift decides the default sigmas, as in diffusers' scripts)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if config.model.prediction_type is not None:
        raise ConfigError(f"model.prediction_type is set but a {arch.id} base predicts the flow (noise - image)",
                          hint="drop model.prediction_type")
    if "guidance_scale" in config.flow.model_fields_set and not pipeline.transformer.config.get("guidance_embeds"):
        raise ConfigError(f"flow.guidance_scale is set but a {arch.id} base has no guidance input",
                          hint="only FLUX.1 dev is guidance-distilled; drop flow.guidance_scale")
    return "flow", FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)


def frozen_dtype(config: TrainConfig):
    """The dtype frozen weights run in: float32, or the mixed-precision dtype."""
    import torch

    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[config.train.mixed_precision]


def store_frozen_fp8(parts: Components, compute_dtype) -> None:
    """``model.fp8_base``: the denoiser's frozen layers, and a FLUX/SD3 T5 encoder that does not train, keep float8
    weights, cast to ``compute_dtype`` for each forward (as kohya's ``--fp8_base`` does for FLUX and T5-XXL). The
    LoRA layers (peft's ``lora_*``), the norms / embeddings diffusers skips and T5's ``wo`` (T5 casts its input to
    that weight's dtype) stay as they are. The T5's cache key says so: its text embeddings differ."""
    import torch

    try:
        from diffusers.hooks import apply_layerwise_casting
        from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN
    except ImportError:
        from .errors import MissingDependency

        raise MissingDependency("model.fp8_base needs diffusers >= 0.33 (layerwise casting)",
                                hint="pip install -U diffusers, or drop model.fp8_base") from None
    fp8 = torch.float8_e4m3fn
    parts.denoiser.enable_layerwise_casting(storage_dtype=fp8, compute_dtype=compute_dtype,
                                            skip_modules_pattern=(*DEFAULT_SKIP_MODULES_PATTERN, "lora_"))
    stored = [parts.denoiser_name]
    t5 = T5_ENCODER.get(parts.architecture.family)
    if t5 and getattr(parts.pipeline, t5, None) is not None and t5 not in parts.trained:
        getattr(parts.pipeline, t5).to(dtype=compute_dtype)
        apply_layerwise_casting(getattr(parts.pipeline, t5), storage_dtype=fp8, compute_dtype=compute_dtype,
                                skip_modules_pattern=(r"\.wo$",))
        parts.content_keys[t5] = f"{parts.content_keys[t5]}:fp8"
        stored.append(t5)
    parts.compute_dtype = compute_dtype
    parts.fp8_stored = tuple(stored)


# --- loading -------------------------------------------------------------------------------------------------


def load_base(config: TrainConfig) -> tuple[Any, BaseSource]:
    spec = config.model.base
    if is_tiny(spec):
        try:
            return tiny_pipeline_from_spec(spec), BaseSource(spec=spec)
        except ValueError as exc:
            raise ConfigError(f"model.base: {exc}") from None
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_folder(path, config), BaseSource(spec=spec, path=path.resolve())
    if path.is_file():
        return _from_single_file(path, config)
    if spec.startswith((".", "/", "~")) or path.suffix in SINGLE_FILE_SUFFIXES:
        raise BaseModelError("no such file or folder", path=spec,
                             hint="model.base takes a diffusers folder, a checkpoint file, a cached Hub id or tiny:sd1")
    return _from_hub_cache(spec, config)


def _from_folder(path: Path, config: TrainConfig):
    from diffusers import DiffusionPipeline

    index = path / "model_index.json"
    if not index.is_file():
        raise BaseModelError("folder has no model_index.json: not a diffusers pipeline", path=path,
                             hint="point model.base at the folder save_pretrained wrote, or at a checkpoint file")
    kind = json.loads(index.read_text()).get("_class_name")
    if kind not in PIPELINE_CLASSES:
        raise BaseModelError(f"{kind} is not a base lorareg trains", path=path,
                             hint=f"supported: {', '.join(PIPELINE_CLASSES)}")
    kwargs: dict[str, Any] = {"local_files_only": True, _dtype_argument(): frozen_dtype(config)}
    if config.model.variant:
        kwargs["variant"] = config.model.variant
    if kind == "StableDiffusionPipeline":  # the safety checker is never used in training: do not load it
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        return _vae_in_float32(DiffusionPipeline.from_pretrained(str(path), **kwargs))
    except (OSError, ValueError) as exc:
        raise BaseModelError(f"cannot load the diffusers folder: {_first_line(exc)}", path=path) from None


def _dtype_argument() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (the old name warns); releases before that know only the old."""
    from diffusers.pipelines import pipeline_utils

    return "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"


def _vae_in_float32(pipeline):
    """Bases load in the dtype their frozen weights train in (a FLUX.1 transformer is 48 GB in float32, 24 in
    bf16); the VAE, which only encodes the cached latents and decodes samples, stays float32."""
    if getattr(pipeline, "vae", None) is not None:
        import torch

        pipeline.vae.to(dtype=torch.float32)
    return pipeline


def _from_single_file(path: Path, config: TrainConfig):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from ..hashes import hash_file

    family = _single_file_mmdit(path)
    if family:
        raise BaseModelError(f"a single-file {family} checkpoint holds the transformer only; lorareg trains "
                             f"{family} from a diffusers folder", path=path,
                             hint="point model.base at the diffusers folder (or cached Hub id) of the base")
    cls = StableDiffusionXLPipeline if _looks_sdxl(path) else StableDiffusionPipeline
    kwargs: dict[str, Any] = {"local_files_only": True, _dtype_argument(): frozen_dtype(config)}
    if config.model.single_file_config:
        kwargs["config"] = config.model.single_file_config
    try:
        pipeline = _vae_in_float32(cls.from_single_file(str(path), **kwargs))
    except Exception as exc:  # noqa: BLE001 - diffusers raises many types here; all mean "cannot build offline"
        raise BaseModelError(
            f"cannot load the single-file checkpoint offline ({type(exc).__name__}: {_first_line(exc)})", path=path,
            hint="diffusers needs the component configs: set model.single_file_config to a diffusers folder or a "
                 "Hub id in your HF cache (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5), or convert the "
                 "checkpoint to a diffusers folder") from None
    return pipeline, BaseSource(spec=str(path), path=path.resolve(), sha256=hash_file(path).sha256)


def _looks_sdxl(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    from ..safetensors_io import read_header

    return any(k.startswith("conditioner.embedders.1.") for k in read_header(path).tensors)


def _single_file_mmdit(path: Path) -> str | None:
    """"FLUX.1" / "SD3" when a .safetensors checkpoint has that family's original block names."""
    if path.suffix != ".safetensors":
        return None
    from ..safetensors_io import read_header

    for key in read_header(path).tensors:
        name = key.removeprefix("model.").removeprefix("diffusion_model.")
        if name.startswith(("double_blocks.", "single_blocks.")):
            return "FLUX.1"
        if name.startswith("joint_blocks."):
            return "SD3"
    return None


def _from_hub_cache(repo_id: str, config: TrainConfig):
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=config.model.revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        raise BaseModelError(f"{repo_id!r} is not in the Hugging Face cache and lorareg never downloads models",
                             hint=f"download it first: hf download {repo_id}") from None
    except HFValidationError:
        raise BaseModelError(f"{repo_id!r} is neither an existing path nor a Hub repo id",
                             hint="model.base takes a diffusers folder, a checkpoint file, a cached Hub id or "
                                  "tiny:sd1") from None
    pipeline = _from_folder(folder, config)
    return pipeline, BaseSource(spec=repo_id, path=folder, model_id=repo_id, revision=folder.name)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


# --- architecture -------------------------------------------------------------------------------------------


def detect_architecture(pipeline) -> Architecture:
    """From structure, not sizes (tiny models keep the structure): SDXL has text-time conditioning and two
    text encoders; SD2 uses linear transformer projections; SD1 1x1 convolutions. FLUX.1 dev has a guidance
    embedding, schnell none; SD3.5 medium has dual attention (MMDiT-X), SD3.5 large q/k norms without it."""
    transformer = getattr(pipeline, "transformer", None)
    if transformer is not None:
        return _mmdit_architecture(transformer)
    if getattr(pipeline, "unet", None) is None:
        raise BaseModelError(f"{type(pipeline).__name__} has neither a UNet nor a transformer to train")
    unet = pipeline.unet.config
    if unet.get("addition_embed_type") == "text_time":
        if getattr(pipeline, "text_encoder", None) is None:
            raise BaseModelError("this is an SDXL refiner (no first text encoder); lorareg trains the SDXL base")
        return get("sdxl-base")
    if getattr(pipeline, "text_encoder", None) is None or unet.get("in_channels") != 4:
        raise BaseModelError("the base is not an SD1, SD2 or SDXL text-to-image model",
                             hint="inpainting and other variants are not supported yet")
    return get("sd2-512" if unet.get("use_linear_projection") else "sd1")


def _mmdit_architecture(transformer) -> Architecture:
    kind = type(transformer).__name__
    config = transformer.config
    if kind == "FluxTransformer2DModel":
        return get("flux1-dev" if config.get("guidance_embeds") else "flux1-schnell")
    if kind == "SD3Transformer2DModel":
        if config.get("dual_attention_layers"):
            return get("sd35-medium")
        return get("sd35-large" if config.get("qk_norm") else "sd3-medium")
    raise BaseModelError(f"a {kind} base is not one lorareg trains", hint="supported: FLUX.1 and SD3.x transformers")


def check_override(detected: Architecture, requested: str | None) -> Architecture:
    if requested is None:
        return detected
    wanted = get(requested)
    if wanted.family != detected.family:
        raise BaseModelError(f"model.architecture is {wanted.id} but the base is {detected.family}",
                             hint="drop model.architecture or fix model.base")
    return wanted


def weights_key(module) -> str:
    """A content key of a model for caches: its config and a digest of a few parameters (cheap, and changes
    when the weights do, unlike a path)."""
    import torch

    h = hashlib.sha256()
    config = getattr(module, "config", None)
    h.update(json.dumps(config.to_dict() if hasattr(config, "to_dict") else dict(config or {}),
                        sort_keys=True, default=str).encode())
    params = list(module.state_dict().items())
    for name, tensor in params[:2] + params[-2:]:
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


# --- LoRA injection -----------------------------------------------------------------------------------------


def inject_lora(parts: Components, config: TrainConfig) -> None:
    from peft import LoraConfig

    from .peft_attach import attach_lora

    net = config.network
    if net.init_from is not None:
        from .init_from import inject_from_file

        inject_from_file(parts, config)
        return
    for component in trained_components(parts, config):
        model = getattr(parts.pipeline, component, None)
        if model is None:
            raise ConfigError(f"network.components lists {component} but a {parts.architecture.id} base has none",
                              hint=f"allowed here: {', '.join(parts.architecture.components)}")
        if component == "transformer":
            suffixes = net.transformer_modules()
            dead = _text_queries_of_last_block(model)
            linear = [n for n in _matching(model, suffixes) if n.startswith(TRANSFORMER_BLOCKS) and n not in dead]
        else:
            suffixes = net.unet_modules() if component == "unet" else net.text_encoder_modules()
            linear = _matching(model, suffixes)
        if component == "text_encoder" and parts.is_sdxl:
            # SDXL reads the first encoder's penultimate layer: a LoRA on its last layer would never train
            last = f"layers.{model.config.num_hidden_layers - 1}."
            linear = [name for name in linear if last not in name]
        conv = _conv_modules(model) if component == "unet" and net.conv_rank else []
        if not linear:
            field_name = f"{component}_targets" if component in ("unet", "transformer") else "text_encoder_targets"
            raise ConfigError(f"network.{field_name} {suffixes} matches no Linear/Conv2d module of the {component}")
        conv_alpha = net.conv_alpha if net.conv_alpha is not None else float(net.conv_rank)
        lora = LoraConfig(
            r=net.rank, lora_alpha=net.alpha, lora_dropout=net.dropout, init_lora_weights=True,
            use_dora=net.use_dora, target_modules=linear + conv,
            rank_pattern={name: net.conv_rank for name in conv}, alpha_pattern={name: conv_alpha for name in conv},
        )
        attach_lora(model, lora)  # peft itself, not transformers' glue (see peft_attach)
        parts.trained[component] = model
        parts.target_modules[component] = linear + conv
        parts.conv_modules += conv


def trained_components(parts: Components, config: TrainConfig) -> list[str]:
    """``network.components`` for this base: a FLUX/SD3 base trains its transformer (the default there; text
    encoder LoRA for T5/CLIP is not trained yet); a UNet base has no transformer."""
    net = config.network
    if not parts.is_flow:
        if "transformer" in net.components:
            raise ConfigError(f"network.components lists transformer but a {parts.architecture.id} base has a UNet",
                              hint="use unet")
        return list(net.components)
    if net.conv_rank:
        raise ConfigError(f"network.conv_rank is set but a {parts.architecture.id} transformer has no convolutions "
                          "to train", hint="drop network.conv_rank")
    if "components" in net.model_fields_set and net.components != ["transformer"]:
        other = next(c for c in net.components if c != "transformer")
        why = ("has no UNet: its denoiser is the transformer" if other == "unet" else
               "trains its transformer only (text encoder LoRA for FLUX/SD3 is not supported yet)")
        raise ConfigError(f"network.components lists {other}: a {parts.architecture.id} base {why}",
                          hint='use components = ["transformer"]')
    return ["transformer"]


def _text_queries_of_last_block(transformer) -> set[str]:
    """SD3's last joint block (``context_pre_only``) drops its text output, so its text queries (``add_q_proj``)
    reach no loss: a LoRA there would never train (and verify flags an all-zero ``up``). Its keys and values do."""
    return {f"transformer_blocks.{i}.attn.add_q_proj" for i, block in enumerate(getattr(transformer,
                                                                                       "transformer_blocks", []))
            if getattr(block, "context_pre_only", False)}


def _matching(model, suffixes: list[str]) -> list[str]:
    import torch

    return [name for name, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
            and any(name == s or name.endswith("." + s) for s in suffixes)]


def _conv_modules(unet) -> list[str]:
    import torch

    blocks = (".resnets.", ".downsamplers.", ".upsamplers.")
    return [name for name, m in unet.named_modules()
            if isinstance(m, torch.nn.Conv2d) and any(b in name for b in blocks) and name.endswith(CONV_SUFFIXES)]
