"""Put a peft LoRA on any torch module with peft itself.

diffusers models have ``add_adapter`` (which calls peft's ``inject_adapter_in_model``); transformers' text
encoders have an ``add_adapter`` too, but that one is transformers' peft glue, which refuses peft releases
it considers too old (transformers >= 5.24 wants peft >= 0.22). Injecting with peft directly is what diffusers
does for the UNet, works with every transformers release, and leaves the same module names, ``peft_config``
and state-dict keys.
"""

from __future__ import annotations

from typing import Any


def attach_lora(model: Any, config: Any, adapter_name: str = "default") -> Any:
    """Inject ``config`` (a ``peft.LoraConfig``) into ``model`` in place and return it."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    return model
