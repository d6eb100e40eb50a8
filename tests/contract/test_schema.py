"""The manifest schema's own checks (contract/schema.py); tests/contract/test_manifest.py runs
them on real exports through every reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from mobilegen.contract.schema import Invalid, json_text, one_of, typed, validate_manifest, whole
from mobilegen.errors import ManifestError


def test_a_value_is_named_as_json_writes_it_and_cut_short():
    assert json_text(None) == "missing or null"
    assert json_text("cat") == '"cat"' and json_text(1.5) == "1.5"
    assert json_text("x" * 100) == '"' + "x" * 36 + "..."
    assert json_text(10**400) == "an integer of about 401 digits"


def test_types_are_json_types():
    assert typed(3, "io.batch", int) == 3
    with pytest.raises(Invalid, match=r"^io.batch: must be an integer \(got boolean true\)$"):
        typed(True, "io.batch", int)
    with pytest.raises(Invalid, match=r"^files: must be an object \(got list \[1\]\)$"):
        typed([1], "files", dict)
    with pytest.raises(Invalid, match=r"^model: must be an object \(missing or null\)$"):
        typed(None, "model", dict)


def test_ranges_and_choices_name_the_field_and_what_is_allowed():
    assert whole({"T": 1000}, "T", "schedule", 1000, 1000) == 1000
    with pytest.raises(Invalid, match=r"^schedule.T: must be in 1000..1000, got 10$"):
        whole({"T": 10}, "T", "schedule", 1000, 1000)
    with pytest.raises(Invalid, match=r"^io.layout: must be one of NCHW, NHWC \(got \"CHWN\"\)$"):
        one_of({"layout": "CHWN"}, "layout", "io", ("NCHW", "NHWC"))


@pytest.mark.parametrize("data, field", [([], "manifest: must be an object"), ({}, "schema_version: must be 1"),
                                         ({"schema_version": 1, "status": "done"}, "status: must be one of passed, failed")])  # fmt: skip
def test_a_malformed_manifest_is_one_manifest_error_naming_file_and_field(data, field):
    with pytest.raises(ManifestError) as info:
        validate_manifest(data, Path("out/manifest.json"))
    message = str(info.value)
    assert message.startswith(f"out/manifest.json: malformed manifest: {field}") and "re-export" in message
    assert info.value.exit_code == 2
