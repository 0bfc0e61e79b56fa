"""Base-architecture ids and the alias table that maps foreign names onto them.

Our ids are short (``sd1``, ``sdxl-base``, ...). Every other convention's name for the same base
(Stability ModelSpec and OMI ``architecture``, kohya ``ss_base_model_version``, Civitai ``baseModel``,
Hub base-model repo ids) is an alias; ``resolve`` accepts any of them, case-insensitively, with or
without a ``/lora``-style adapter suffix.
"""

from __future__ import annotations

from ..errors import UnknownArchitecture
from ..record import FrozenRecord


class Architecture(FrozenRecord):
    id: str
    family: str  # sd1 / sd2 / sdxl / sd3 / flux
    title: str
    components: tuple[str, ...]
    prediction_type: str  # epsilon / v / flow
    resolution: int
    modelspec: str  # ModelSpec base architecture; an adapter writes f"{modelspec}/lora"
    kohya: str  # ss_base_model_version
    hub_tag: str  # the family tag a Hub model card carries
    hub_repos: tuple[str, ...]  # first one is the canonical base_model for cards
    civitai: tuple[str, ...]
    aliases: tuple[str, ...]  # other spellings (OMI ids, older kohya values, ...)
    fingerprint: str  # name of the shipped module fingerprint; shapes shared where equal

    def __init__(self, id: str, family: str, title: str, components: tuple[str, ...], prediction_type: str,
                 resolution: int, modelspec: str, kohya: str, hub_tag: str, hub_repos: tuple[str, ...],
                 civitai: tuple[str, ...] = (), aliases: tuple[str, ...] = (), fingerprint: str = "") -> None:
        self._set(id=id, family=family, title=title, components=components, prediction_type=prediction_type,
                  resolution=resolution, modelspec=modelspec, kohya=kohya, hub_tag=hub_tag, hub_repos=hub_repos,
                  civitai=civitai, aliases=aliases, fingerprint=fingerprint)

    @property
    def modelspec_lora(self) -> str:
        return f"{self.modelspec}/lora"

    @property
    def ss_v2(self) -> bool:
        return self.family == "sd2"


_ALL = (
    Architecture(
        id="sd1", family="sd1", title="Stable Diffusion 1.x", components=("unet", "text_encoder"),
        prediction_type="epsilon", resolution=512, modelspec="stable-diffusion-v1", kohya="sd_v1",
        hub_tag="stable-diffusion",
        hub_repos=("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5",
                   "CompVis/stable-diffusion-v1-4"),
        civitai=("SD 1.5", "SD 1.4", "SD 1.5 LCM", "SD 1.5 Hyper"),
        aliases=("sd15", "sd1.5", "sd14", "sd-v1", "v1"),
        fingerprint="sd1",
    ),
    Architecture(
        id="sd2-512", family="sd2", title="Stable Diffusion 2.x (512, epsilon)", components=("unet", "text_encoder"),
        prediction_type="epsilon", resolution=512, modelspec="stable-diffusion-v2-512", kohya="sd_v2",
        hub_tag="stable-diffusion",
        hub_repos=("stabilityai/stable-diffusion-2-1-base", "stabilityai/stable-diffusion-2-base"),
        civitai=("SD 2.0", "SD 2.1"),
        aliases=("sd2", "sd21-base", "sd2-base"),
        fingerprint="sd2",
    ),
    Architecture(
        id="sd2-768-v", family="sd2", title="Stable Diffusion 2.x (768, v-prediction)",
        components=("unet", "text_encoder"), prediction_type="v", resolution=768,
        modelspec="stable-diffusion-v2-768-v", kohya="sd_v2_v", hub_tag="stable-diffusion",
        hub_repos=("stabilityai/stable-diffusion-2-1", "stabilityai/stable-diffusion-2"),
        civitai=("SD 2.0 768", "SD 2.1 768"),
        aliases=("sd21", "sd2-v", "sd2-768"),
        fingerprint="sd2",
    ),
    Architecture(
        id="sdxl-base", family="sdxl", title="Stable Diffusion XL 1.0 base",
        components=("unet", "text_encoder", "text_encoder_2"), prediction_type="epsilon", resolution=1024,
        modelspec="stable-diffusion-xl-v1-base", kohya="sdxl_base_v1-0", hub_tag="stable-diffusion-xl",
        hub_repos=("stabilityai/stable-diffusion-xl-base-1.0",),
        civitai=("SDXL 1.0", "SDXL 0.9", "SDXL 1.0 LCM", "SDXL Turbo", "SDXL Lightning", "SDXL Hyper",
                 "Pony", "Illustrious", "NoobAI"),
        aliases=("sdxl", "sdxl-1.0", "sdxl_base_v0-9", "stable-diffusion-xl-v0_9-base"),
        fingerprint="sdxl-base",
    ),
    Architecture(
        id="sdxl-refiner", family="sdxl", title="Stable Diffusion XL 1.0 refiner",
        components=("unet", "text_encoder_2"), prediction_type="epsilon", resolution=1024,
        modelspec="stable-diffusion-xl-v1-refiner", kohya="sdxl_refiner_v1-0", hub_tag="stable-diffusion-xl",
        hub_repos=("stabilityai/stable-diffusion-xl-refiner-1.0",),
        civitai=("SDXL 1.0 Refiner",),
        aliases=("sdxl-refiner-1.0",),
        fingerprint="sdxl-refiner",
    ),
    Architecture(
        id="sd3-medium", family="sd3", title="Stable Diffusion 3 Medium",
        components=("transformer", "text_encoder", "text_encoder_2", "text_encoder_3"),
        prediction_type="flow", resolution=1024, modelspec="stable-diffusion-3-medium", kohya="sd3",
        hub_tag="sd3",
        hub_repos=("stabilityai/stable-diffusion-3-medium-diffusers", "stabilityai/stable-diffusion-3-medium"),
        civitai=("SD 3",),
        aliases=("sd3", "stable-diffusion-v3-medium", "sd3-m"),
        fingerprint="sd3-medium",
    ),
    Architecture(
        id="sd35-large", family="sd3", title="Stable Diffusion 3.5 Large",
        components=("transformer", "text_encoder", "text_encoder_2", "text_encoder_3"),
        prediction_type="flow", resolution=1024, modelspec="stable-diffusion-3.5-large", kohya="sd3.5-large",
        hub_tag="sd3",
        hub_repos=("stabilityai/stable-diffusion-3.5-large", "stabilityai/stable-diffusion-3.5-large-turbo"),
        civitai=("SD 3.5 Large", "SD 3.5 Large Turbo"),
        aliases=("sd3.5-large", "sd35l", "stable-diffusion-v3.5-large", "sd3.5l"),
        fingerprint="sd35-large",  # 38 joint blocks, 2432 wide, RMS q/k norms
    ),
    Architecture(
        id="sd35-medium", family="sd3", title="Stable Diffusion 3.5 Medium",
        components=("transformer", "text_encoder", "text_encoder_2", "text_encoder_3"),
        prediction_type="flow", resolution=1024, modelspec="stable-diffusion-3.5-medium", kohya="sd3.5-medium",
        hub_tag="sd3",
        hub_repos=("stabilityai/stable-diffusion-3.5-medium",),
        civitai=("SD 3.5 Medium",),
        aliases=("sd3.5-medium", "sd35m", "stable-diffusion-v3.5-medium", "sd3.5m"),
        fingerprint="sd35-medium",  # SD3 Medium's widths plus MMDiT-X attn2 in blocks 0-12 and RMS q/k norms
    ),
    Architecture(
        id="flux1-dev", family="flux", title="FLUX.1 [dev]",
        components=("transformer", "text_encoder", "text_encoder_2"), prediction_type="flow", resolution=1024,
        modelspec="flux-1-dev", kohya="flux1", hub_tag="flux",
        hub_repos=("black-forest-labs/FLUX.1-dev",),
        civitai=("Flux.1 D",),
        aliases=("flux1", "flux", "flux.1-dev", "flux-dev"),
        fingerprint="flux1",
    ),
    Architecture(
        id="flux1-schnell", family="flux", title="FLUX.1 [schnell]",
        components=("transformer", "text_encoder", "text_encoder_2"), prediction_type="flow", resolution=1024,
        modelspec="flux-1-schnell", kohya="flux1_schnell", hub_tag="flux",
        hub_repos=("black-forest-labs/FLUX.1-schnell",),
        civitai=("Flux.1 S",),
        aliases=("flux.1-schnell", "flux-schnell"),
        fingerprint="flux1",
    ),
)

ARCHITECTURES: dict[str, Architecture] = {a.id: a for a in _ALL}

_ADAPTER_SUFFIXES = ("/lora", "/lycoris", "/loha", "/lokr", "/dora", "/locon")


def _norm(name: str) -> str:
    return name.strip().lower()


def _build_alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for arch in _ALL:
        names = (arch.id, arch.modelspec, arch.kohya, *arch.hub_repos, *arch.civitai, *arch.aliases)
        for name in names:
            key = _norm(name)
            if key in table and table[key] != arch.id:  # one alias, one meaning
                raise AssertionError(f"alias {name!r} maps to {table[key]} and {arch.id}")
            table[key] = arch.id
    return table


_ALIASES = _build_alias_table()


def resolve(name: str | None) -> Architecture | None:
    """The architecture any known spelling names, or None. Adapter suffixes (``/lora``) are ignored."""
    if not name:
        return None
    key = _norm(name)
    for suffix in _ADAPTER_SUFFIXES:
        if key.endswith(suffix):
            key = key[: -len(suffix)]
            break
    arch_id = _ALIASES.get(key)
    return ARCHITECTURES[arch_id] if arch_id else None


def get(name: str) -> Architecture:
    """Like ``resolve`` but raises ``UnknownArchitecture`` naming the known ids."""
    arch = resolve(name)
    if arch is None:
        known = ", ".join(ARCHITECTURES)
        raise UnknownArchitecture(f"unknown base architecture {name!r}", hint=f"known ids: {known}")
    return arch
