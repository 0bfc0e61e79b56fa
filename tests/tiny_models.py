"""Tiny, seeded, offline Stable Diffusion components for tests (CPU, well under a second each).

Every builder constructs its model from a config with a fixed seed, so two calls give bit-identical weights, and
nothing touches the Hub (the diffusers test-suite downloads ``hf-internal-testing/tiny-random-clip``; we build the
tokenizer from an in-memory byte-level vocabulary instead).

Dimensions are tiny, but the *structural* signals of each base family are kept, because detection and
compatibility checks key on them:

============  =========================================================================================
arch          what is kept from the real model
============  =========================================================================================
``sd1``       attention in ``down_blocks.0`` (none in the last down block), ``use_linear_projection=False``
              (``proj_in``/``proj_out`` are 1x1 ``Conv2d``), one int ``attention_head_dim``, CLIP text encoder
              with ``quick_gelu``; cross_attention_dim == text hidden size (32; real 768).
``sd2``       same block layout, ``use_linear_projection=True`` (projections are ``Linear``), per-block
              ``attention_head_dim`` tuple (real SD2: ``[5, 10, 20, 20]``), OpenCLIP-like text encoder with
              ``gelu`` and a different hidden size (48; real 1024). ``sd2-v`` only changes the scheduler's
              ``prediction_type`` to ``v_prediction``.
``sdxl``      no attention in ``down_blocks.0`` (``DownBlock2D`` first), ``transformer_layers_per_block``
              growing per block (real ``[1, 2, 10]``), linear projections, ``addition_embed_type="text_time"``,
              two text encoders (``CLIPTextModel`` 32 + ``CLIPTextModelWithProjection`` 64; real 768 + 1280);
              cross_attention_dim is their sum (96; real 2048).
============  =========================================================================================

Real dimensions (768/1024/2048) are NOT reproduced: shape-based detection must be tested against fingerprints
of the real configs, not against these models.
"""

from __future__ import annotations

from typing import Any

import pytest

# The builders live in the package (``model.base = "tiny:sd1"`` trains on them); the tests use the same ones.
from loraregistry.train.tiny import (  # noqa: E402,F401
    ARCHES,
    MODEL_MAX_LENGTH,
    SEED_TEXT_ENCODER,
    SEED_UNET,
    SEED_VAE,
    canonical_arch,
    text_encoder_config,
    tiny_pipeline,
    tiny_scheduler,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_unet,
    tiny_vae,
    tiny_vocab,
    unet_config,
)

# --------------------------------------------------------------------------------------------- fixtures
# Import these into a test module (``from tests.tiny_models import tiny_sd1_pipeline``) to use them.


@pytest.fixture
def tiny_sd1_pipeline():
    return tiny_pipeline("sd1")


@pytest.fixture
def tiny_sdxl_pipeline():
    return tiny_pipeline("sdxl")


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """Factory: ``tiny_pipeline_dir(arch)`` -> a folder written by ``save_pretrained`` (cached per session)."""
    cache: dict[str, Any] = {}

    def make(arch: str = "sd1"):
        arch = canonical_arch(arch)
        if arch not in cache:
            path = tmp_path_factory.mktemp(f"tiny-{arch}")
            tiny_pipeline(arch).save_pretrained(path)
            cache[arch] = path
        return cache[arch]

    return make
