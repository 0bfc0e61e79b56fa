"""`lorareg meta set|import|show`: edits the record, never the tensors; a failed edit changes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loraregistry.adapter import AdapterFile
from loraregistry.cli import main
from loraregistry.hashes import hash_file
from loraregistry.safetensors_io import read_header, write_safetensors

SD1_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
SD1_TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


@pytest.fixture
def kohya_file(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {}
    for name, width in ((SD1_Q, 320), (SD1_TE, 768)):
        tensors[f"{name}.lora_down.weight"] = rng.standard_normal((4, width)).astype(np.float16)
        tensors[f"{name}.lora_up.weight"] = rng.standard_normal((width, 4)).astype(np.float16)
        tensors[f"{name}.alpha"] = np.array(2.0, dtype=np.float16)
    path = tmp_path / "style.safetensors"
    write_safetensors(path, tensors, {"ss_network_module": "networks.lora", "ss_network_dim": "4",
                                      "ss_network_alpha": "2", "ss_base_model_version": "sd_v1",
                                      "ss_v2": "False", "ss_tag_frequency": '{"10_x": {"shape": 3}}'})
    return path


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_set_keeps_tensor_bytes_and_autov3(kohya_file, capsys):
    before = hash_file(kohya_file)
    data_before = kohya_file.read_bytes()[read_header(kohya_file).data_offset:]
    code, _, err = run(capsys, "meta", "set", str(kohya_file), "--trigger-words", "lrgshape, red circle",
                       "--license", "openrail-m", "--content-rating", "mature", "--base", "SD 1.5",
                       "--set", "training.seed=42")
    assert code == 0, err
    after = hash_file(kohya_file)
    assert after.autov3 == before.autov3 and after.sha256 != before.sha256
    assert kohya_file.read_bytes()[read_header(kohya_file).data_offset:] == data_before
    meta = AdapterFile.open(kohya_file).metadata
    assert meta.trigger_words == ["lrgshape", "red circle"]
    assert meta.license == "openrail-m"
    assert meta.content_rating == "mature"
    assert meta.base.architecture == "sd1"
    assert meta.training.seed == 42
    assert meta.tensor_sha256 == before.autov3
    raw = read_header(kohya_file).metadata
    assert json.loads(raw["lorareg"])["schema_version"] == "1"
    assert raw["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert raw["ss_base_model_version"] == "sd_v1"
    assert raw["ss_tag_frequency"] == '{"10_x": {"shape": 3}}'  # foreign keys we don't own are kept


@pytest.mark.parametrize("args, phrase", [
    (["--set", "content_rating=spicy"], "content_rating"),
    (["--set", "recommended_weight=\"heavy\""], "recommended_weight"),
    (["--base", "sd9000"], "unknown base architecture"),
    (["--set", "nonsense_field=1"], "nonsense_field"),
    (["--set", "no-equals-sign"], "FIELD=VALUE"),
])
def test_failed_set_leaves_file_untouched(kohya_file, capsys, args, phrase):
    original = kohya_file.read_bytes()
    code, out, err = run(capsys, "meta", "set", str(kohya_file), *args)
    assert code == 2
    assert phrase in err and err.count("\n") == 1
    assert kohya_file.read_bytes() == original
    assert sorted(p.name for p in kohya_file.parent.iterdir()) == [kohya_file.name]


def test_set_to_output_copy_leaves_input(kohya_file, tmp_path, capsys):
    original = kohya_file.read_bytes()
    out_path = tmp_path / "copy.safetensors"
    code, _, err = run(capsys, "meta", "set", str(kohya_file), "-o", str(out_path), "--name", "Shapes")
    assert code == 0, err
    assert kohya_file.read_bytes() == original
    assert AdapterFile.open(out_path).metadata.name == "Shapes"


def test_import_writes_record_from_foreign_metadata(kohya_file, capsys):
    code, out, err = run(capsys, "meta", "import", str(kohya_file), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert "lorareg" in read_header(kohya_file).metadata
    assert info["metadata"]["base"]["architecture"] == "sd1"
    assert info["metadata"]["network"]["rank"] == 4
    assert info["metadata"]["network"]["alpha"] == 2


def test_show_json_lists_sources_and_raw(kohya_file, capsys):
    code, out, _ = run(capsys, "meta", "show", "--json", str(kohya_file))
    assert code == 0
    info = json.loads(out)
    assert "kohya" in info["sources"]
    assert info["raw"]["ss_network_dim"] == "4"


# --- meta unset -------------------------------------------------------------------------------------


def test_unset_removes_fields_and_header_keys_in_one_edit(kohya_file, capsys):
    assert run(capsys, "meta", "set", str(kohya_file), "--license", "cc0-1.0", "--tags", "a,b")[0] == 0
    autov3 = hash_file(kohya_file).autov3
    code, _, _ = run(capsys, "meta", "unset", str(kohya_file), "license", "tags", "ss_tag_frequency")
    assert code == 0
    header = read_header(kohya_file).metadata
    record = json.loads(header["lorareg"])
    assert "license" not in record and "tags" not in record and "ss_tag_frequency" not in header
    assert "modelspec.license" not in header and "modelspec.tags" not in header  # projections follow the record
    assert header["ss_network_dim"] == "4"  # untouched keys stay
    assert hash_file(kohya_file).autov3 == autov3


@pytest.mark.parametrize("names, phrase", [
    (["no_such_key"], "no record field or header key 'no_such_key'"),
    (["license", "no_such_key"], "no_such_key"),
    (["lorareg", "license"], "alone"),
])
def test_failed_unset_leaves_file_untouched(kohya_file, capsys, names, phrase):
    before = kohya_file.read_bytes()
    code, _, err = run(capsys, "meta", "unset", str(kohya_file), *names)
    assert code == 2 and phrase in err and "Traceback" not in err
    assert kohya_file.read_bytes() == before


def test_unset_lorareg_drops_an_invalid_record_and_import_rebuilds_it(kohya_file, capsys):
    header = dict(read_header(kohya_file).metadata)
    header["lorareg"] = json.dumps({"schema_version": "1", "bogus_field": 1})
    from loraregistry.safetensors_io import rewrite_metadata

    rewrite_metadata(kohya_file, header)
    assert run(capsys, "meta", "set", str(kohya_file), "--license", "x")[0] == 2  # the record does not validate
    assert run(capsys, "meta", "unset", str(kohya_file), "lorareg")[0] == 0
    assert "lorareg" not in read_header(kohya_file).metadata
    assert run(capsys, "meta", "import", str(kohya_file))[0] == 0
    record = json.loads(read_header(kohya_file).metadata["lorareg"])
    assert record["network"]["rank"] == 4 and "bogus_field" not in record
