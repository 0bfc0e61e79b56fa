"""``meta import`` writes only declared facts into foreign keys (``ss_*``, ``modelspec.*``).

For every golden and a few built files, the header is compared key by key before and after ``lorareg meta
import``. A foreign key may appear or change only to what the file's *declared* metadata projects to (the
import of the header alone, without the weights); what lorareg reads from the weights stays in the ``lorareg``
record, listed under ``inferred``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from loraregistry.architectures import fingerprint
from loraregistry.cli import main
from loraregistry.safetensors_io import read_header
from loraregistry.schema import HEADER_KEY, from_header_value, import_metadata, project_metadata
from loraregistry.schema.resolve import flatten

from .adapters import KNOWN_BAD_ADAPTERS, kohya_name, lora_factors, lora_tensors, write_adapter

GOLDEN = Path(__file__).parent / "golden"
RESNET_CONVS = ("down_blocks.0.resnets.0.conv1", "down_blocks.0.resnets.0.conv2")
PLAIN_KOHYA = {"ss_network_module": "networks.lora", "ss_network_dim": "2", "ss_network_alpha": "1.0",
               "ss_base_model_version": "sd_v1", "ss_v2": "False"}


def _locon_without_args(folder: Path) -> Path:
    """A real LoCon (3x3 ResNet convs at rank 2) whose ss_* keys, like many, never mention conv_dim."""
    tensors = lora_tensors("sd1", rank=2)
    rng = np.random.default_rng(5)
    for path in RESNET_CONVS:
        down, up = lora_factors(fingerprint("sd1").lookup("unet", path), 2, rng)
        name = kohya_name("lora_unet", path)
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                    f"{name}.alpha": np.asarray(1.0, dtype=np.float16)}
    return write_adapter(folder / "locon_no_args.safetensors", tensors, PLAIN_KOHYA)


BUILT = {
    # the case: SD1.5 kohya with proj_in/proj_out stored as 1x1 convs, no ss_network_args
    "sd1_plain_kohya": lambda folder: write_adapter(folder / "plain.safetensors", lora_tensors("sd1"), PLAIN_KOHYA),
    "sd1_no_metadata": lambda folder: write_adapter(folder / "bare.safetensors", lora_tensors("sd1")),
    "sd1_locon_no_args": _locon_without_args,
}
CASES = [pytest.param(lambda folder, p=p: shutil.copy(p, folder / p.name), id=p.stem)
         for p in sorted(GOLDEN.glob("*.safetensors"))]
CASES += [pytest.param(build, id=name) for name, build in BUILT.items()]
# known-bad files whose defect is in the metadata (an invalid lorareg record is refused by import, exit 2)
CASES += [pytest.param(bad.build, id=bad.name) for bad in KNOWN_BAD_ADAPTERS
          if bad.code.startswith("LRG5") and bad.name != "record_invalid" or bad.code in ("LRG202", "LRG205")]


def _import(path: Path) -> None:
    assert main(["meta", "import", str(path)]) == 0


@pytest.mark.parametrize("build", CASES)
def test_meta_import_adds_no_foreign_key_a_declaration_does_not_back(tmp_path, build):
    path = Path(build(tmp_path))
    before = dict(read_header(path).metadata)
    declared = {k: v for k, v in project_metadata(import_metadata(before).metadata).items() if k != HEADER_KEY}
    _import(path)
    after = dict(read_header(path).metadata)
    changed = {key: value for key, value in after.items() if key != HEADER_KEY and before.get(key) != value}
    unbacked = {key: value for key, value in changed.items() if declared.get(key) != value}
    assert unbacked == {}, f"written without a declaration: {unbacked}"
    # The record lists as inferred exactly the fields where it says more than the declarations do.
    record = flatten(from_header_value(after[HEADER_KEY]))
    declared_record = flatten(import_metadata(before).metadata)
    differs = {path for path, value in record.items() if path != "inferred" and declared_record.get(path) != value}
    assert set(record.get("inferred", [])) == differs


@pytest.mark.parametrize("build", [BUILT["sd1_plain_kohya"], lambda folder: shutil.copy(
    GOLDEN / "sd1_kohya.safetensors", folder / "sd1_kohya.safetensors")], ids=["built", "golden"])
def test_one_by_one_convs_are_not_locon(tmp_path, build):
    path = Path(build(tmp_path))
    assert any(len(info.shape) == 4 and "proj_in" in key for key, info in read_header(path).tensors.items())
    declared = read_header(path).metadata.get("ss_network_args")  # the golden's writer declares its own
    _import(path)
    after = read_header(path).metadata
    record = from_header_value(after[HEADER_KEY])
    assert (record.network.type, record.network.conv_rank, record.network.conv_alpha) == ("lora", None, None)
    assert after.get("ss_network_args") == declared


def test_a_real_locon_keeps_its_inferred_conv_rank_in_the_record_only(tmp_path):
    path = _locon_without_args(tmp_path)
    _import(path)
    after = read_header(path).metadata
    record = from_header_value(after[HEADER_KEY])
    assert (record.network.type, record.network.conv_rank, record.network.conv_alpha) == ("locon", 2, 1.0)
    assert {"network.type", "network.conv_rank", "network.conv_alpha", "tensor_sha256"} <= set(record.inferred)
    assert "ss_network_args" not in after and after["ss_network_module"] == "networks.lora"
    assert "modelspec.hash_sha256" not in after and "sshs_model_hash" not in after


def test_a_field_the_user_sets_is_declared_and_projected(tmp_path):
    path = _locon_without_args(tmp_path)
    _import(path)
    assert main(["meta", "set", str(path), "--set", "network.conv_rank=2", "--set", "network.conv_alpha=1"]) == 0
    after = read_header(path).metadata
    record = from_header_value(after[HEADER_KEY])
    assert "network.conv_rank" not in record.inferred and "network.conv_alpha" not in record.inferred
    assert after["ss_network_args"] == '{"conv_alpha": "1", "conv_dim": "2"}'


@pytest.mark.parametrize(("name", "key"), [("declared_rank_differs", "ss_network_dim"),
                                           ("stale_modelspec_hash", "modelspec.hash_sha256")])
def test_a_declaration_the_weights_contradict_is_dropped_not_kept(tmp_path, name, key):
    bad = next(b for b in KNOWN_BAD_ADAPTERS if b.name == name)
    path = bad.build(tmp_path)
    assert key in read_header(path).metadata
    _import(path)
    assert key not in read_header(path).metadata
