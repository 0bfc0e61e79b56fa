"""Broken containers become integrity findings with their own code; verify never raises for them."""

from __future__ import annotations

import pytest

from loraregistry.verify import verify
from tests.known_bad import KNOWN_BAD

EXPECTED = {
    "empty_file": "LRG001",
    "shorter_than_length_field": "LRG002",
    "zip_checkpoint_renamed": "LRG014",
    "pickle_checkpoint_renamed": "LRG014",
    "header_length_past_end": "LRG003",
    "header_over_cap": "LRG004",
    "header_invalid_json": "LRG005",
    "header_not_utf8": "LRG005",
    "header_is_json_array": "LRG005",
    "metadata_value_not_string": "LRG006",
    "metadata_not_object": "LRG006",
    "unknown_dtype": "LRG007",
    "shape_span_mismatch": "LRG009",
    "negative_dimension": "LRG008",
    "overlapping_offsets": "LRG010",
    "gap_between_tensors": "LRG011",
    "offsets_reversed": "LRG008",
    "truncated_data": "LRG002",
    "trailing_bytes": "LRG012",
    "duplicate_tensor_key": "LRG013",
    "duplicate_metadata_key": "LRG013",
    "entry_missing_dtype": "LRG008",
    "header_length_zero": "LRG005",
    "duplicate_metadata_spelled_with_escapes": "LRG013",
    "duplicate_tensor_key_hiding_an_incomplete_entry": "LRG013",
    "duplicate_field_in_tensor_entry": "LRG013",
    "lone_surrogate_in_tensor_name": "LRG016",
    "lone_surrogate_in_metadata_value": "LRG016",
    "lone_surrogate_in_metadata_key": "LRG016",
    "integer_over_4300_digits": "LRG017",
    "dimension_over_64_bits": "LRG017",
    "dimension_over_63_bits": "LRG017",
    "dimension_over_63_bits_in_a_4_bit_tensor": "LRG017",
    "shape_product_overflows": "LRG017",
    "byte_size_overflows": "LRG017",
    "more_than_64_dimensions": "LRG017",
    "negative_zero_dimension": "LRG008",
    "nan_in_tensor_entry": "LRG005",
    "float_beyond_double_in_tensor_entry": "LRG017",
    "integer_beyond_double_in_tensor_entry": "LRG017",
    "nesting_past_the_json_parser_limit": "LRG008",
    "too_many_tensors": "LRG018",
    "too_many_values_in_a_tensor_entry": "LRG024",
    "git_lfs_pointer": "LRG019",
    "html_login_page": "LRG020",
    "xml_error_page": "LRG020",
    "json_error_body": "LRG021",
    "json_empty_object": "LRG021",
    "gzip_compressed": "LRG022",
    "zip_of_safetensors": "LRG022",
    "text_error_message": "LRG023",
}


def test_every_container_defect_has_an_expected_code():
    assert {bad.name for bad in KNOWN_BAD} == set(EXPECTED)


@pytest.mark.parametrize("bad", KNOWN_BAD, ids=lambda b: b.name)
def test_container_defect_gets_its_code(bad, tmp_path):
    path = tmp_path / f"{bad.name}.safetensors"
    path.write_bytes(bad.content)
    report = verify(path)
    assert [f.code for f in report.findings] == [EXPECTED[bad.name]]
    found = report.findings[0]
    assert found.family == "integrity" and found.severity == "error"
    assert found.hint and bad.phrase in f"{found.message} ({found.hint})"
    assert not report.ok and report.exit_code() == 1
    assert report.to_dict()["format"] is None
    assert path.read_bytes() == bad.content  # never modified
