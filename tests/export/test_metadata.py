"""TFLite metadata in every exported .tflite file, read back by an independent reader
(tests/tflite_metadata_reader.py: tflite-support's generated modules), and outputs that are
bit-identical with and without it. The int8 files are checked in test_quantize.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from tflite_metadata_reader import check_metadata, read

from mobilegen.compress.quantize import quantize_tflite
from mobilegen.contract.labels import CIFAR10_LABELS
from mobilegen.contract.spec import DenoiserSpec
from mobilegen.diffusion import linear_schedule
from mobilegen.diffusion.cases import Cases, forward_process_cases
from mobilegen.errors import ExportError
from mobilegen.export.metadata import About, add_metadata
from mobilegen.export.schedule import schedule_depth_first
from mobilegen.export.tflite import convert_onnx_to_tflite, to_fp16_weights
from mobilegen.runtime.backends import TFLiteBackend

SPEC = DenoiserSpec(layout="NHWC")


@pytest.mark.parametrize("name", ["denoiser_float32.tflite", "denoiser_float16.tflite"])
def test_exported_files_carry_metadata(tiny_export, name):
    out, _ = tiny_export
    check_metadata(out / name, json.loads((out / "manifest.json").read_text()))


@pytest.mark.slow  # four conversions and two quantizations of the tiny network: ~10 s
def test_metadata_changes_no_output_bit_and_the_export_is_plain_plus_metadata(tiny_export, tmp_path):
    """The stages without metadata, from the export's own ONNX file (with the depth-first
    operator order); then add_metadata. The
    exported fp32/fp16 files are exactly those bytes, and every file (int8 included) gives
    bit-identical eps with and without the block, through the signature runner."""
    export = tiny_export[0]
    manifest = json.loads((export / "manifest.json").read_text())
    plain = {"float32": convert_onnx_to_tflite(export / "denoiser.onnx", SPEC, tmp_path)}
    plain["float16"] = to_fp16_weights(plain["float32"], tmp_path / "denoiser_float16.tflite")
    cases = forward_process_cases(linear_schedule())
    few = Cases(cases.x[::7], cases.t[::7], cases.y[::7])  # 11 cases: t 1..999, y -1..9
    for mode in ("dynamic", "full"):
        plain[f"int8_{mode}"] = tmp_path / f"denoiser_int8_{mode}.tflite"
        quantize_tflite(plain["float32"], plain[f"int8_{mode}"], mode, SPEC, few)
    for precision, path in plain.items():
        schedule_depth_first(path)  # as the pipeline does, before the metadata
        with_meta = shutil.copy(path, tmp_path / f"meta_{precision}.tflite")
        add_metadata(
            with_meta, SPEC, About(manifest["model"]["arch"], precision, manifest["source"]["sha256"], 1000, CIFAR10_LABELS)
        )
        if precision in ("float32", "float16"):
            assert with_meta.read_bytes() == (export / f"denoiser_{precision}.tflite").read_bytes()
        else:
            check_metadata(with_meta, manifest)
        before, after = (TFLiteBackend(p, SPEC)(few.x, few.t, few.y) for p in (path, with_meta))
        assert np.array_equal(before, after), precision
        plain_read, meta_read = read(path), read(with_meta)
        # add_metadata adds its block and drops the converter's unverified float16 hint, nothing else
        assert plain_read["entries"].keys() - {"reduced_precision_support"} == meta_read["entries"].keys() - {"TFLITE_METADATA"}
        assert "reduced_precision_support" not in meta_read["entries"]
        assert plain_read["signatures"] == meta_read["signatures"] == ["serving_default"] and not plain_read["zip"]


def test_metadata_is_added_once(tiny_export, tmp_path):
    path = shutil.copy(tiny_export[0] / "denoiser_float32.tflite", tmp_path / "again.tflite")
    before = path.read_bytes()
    with pytest.raises(ExportError, match="already holds TFLITE_METADATA"):
        add_metadata(path, SPEC, About("student_v2", "float32", None, 1000, CIFAR10_LABELS))
    assert path.read_bytes() == before


@pytest.mark.slow  # the README's export of the untrained v2
def test_the_default_model_says_it_is_untrained(default_export):
    out, _ = default_export
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["sha256"] is None
    check_metadata(out / "denoiser_float16.tflite", manifest)


def test_no_file_claims_float16_arithmetic_that_the_export_did_not_verify(tiny_export):
    """onnx2tf writes a reduced_precision_support entry; export verifies no float16 arithmetic
    path, so no exported file carries one (docs/measurements/targets-v2-fp16safe/ for the paths)."""
    from ai_edge_litert import schema_py_generated as tfl

    for path in sorted(tiny_export[0].glob("*.tflite")):
        model = tfl.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
        names = [m.name.decode() if isinstance(m.name, bytes) else m.name for m in model.metadata]
        assert "reduced_precision_support" not in names and "TFLITE_METADATA" in names, (path.name, names)
