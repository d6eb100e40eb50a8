"""`mobilegen-export tflite`: real conversions, run in the stock LiteRT interpreter."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import manifest_of, run

from mobilegen.contract.manifest import spec_from_manifest
from mobilegen.errors import ExportError
from mobilegen.files import sha256_file
from mobilegen.models.checkpoint import load_checkpoint
from mobilegen.runtime.backends import TFLiteBackend
from mobilegen.runtime.tflite_file import check_builtin_only, tflite_op_types, tflite_tensor_types

FILES = {"denoiser_float32.tflite", "denoiser_float16.tflite", "denoiser.onnx", "manifest.json", "labels.txt", "report.md"}
TFLITE = ("denoiser_float32.tflite", "denoiser_float16.tflite")


def test_writes_every_file_and_a_passing_manifest(default_export):
    out, _ = default_export
    assert {p.name for p in out.iterdir()} == FILES
    m = manifest_of(out)
    assert m["status"] == "passed" and m["model"]["arch"] == "student_v2"
    assert all(p["passed"] for p in m["parity"].values())
    assert m["parity"]["denoiser_float32.tflite"]["min_psnr_db"] >= 80
    assert m["parity"]["denoiser_float16.tflite"]["min_psnr_db"] >= 40
    assert len(m["schedule"]["alphas_cumprod"]) == 1000 and m["labels"][1] == "automobile"
    assert (out / "labels.txt").read_text().split() == m["labels"]


def test_manifest_hashes_match(default_export):
    out, _ = default_export
    for name, entry in manifest_of(out)["files"].items():
        assert sha256_file(out / name) == entry["sha256"]
        assert (out / name).stat().st_size == entry["bytes"]


@pytest.mark.parametrize("name", TFLITE)
def test_builtin_ops_only_and_stock_litert_signature(default_export, name):
    out, _ = default_export
    from ai_edge_litert.interpreter import Interpreter

    path = out / name
    ops = check_builtin_only(path)
    assert "CONV_2D" in ops and "GELU" in ops and not any(op.startswith("CUSTOM") for op in ops)
    interp = Interpreter(model_path=str(path))
    sig = interp.get_signature_list()["serving_default"]
    assert sorted(sig["inputs"]) == ["t", "x", "y"] and sig["outputs"] == ["eps"]
    runner = interp.get_signature_runner()
    details = runner.get_input_details()
    assert {k: v["dtype"] for k, v in details.items()} == {"x": np.float32, "t": np.float32, "y": np.int32}
    assert list(details["x"]["shape"]) == [1, 64, 64, 3]
    assert runner.get_output_details()["eps"]["dtype"] == np.float32


def test_fp16_file_stores_half_weights_behind_dequantize(default_export):
    out, _ = default_export
    f32, f16 = (out / n for n in TFLITE)
    assert f16.stat().st_size <= 0.52 * f32.stat().st_size
    assert "DEQUANTIZE" in tflite_op_types(f16) and "DEQUANTIZE" not in tflite_op_types(f32)
    assert tflite_tensor_types(f16).get("FLOAT16", 0) > 50 and "FLOAT16" not in tflite_tensor_types(f32)


@pytest.mark.slow
@pytest.mark.parametrize("name", TFLITE)
def test_unconditional_label_works_in_tflite(real_v2_export, real_v2, name):
    from mobilegen.compress.unstructured import prune_l1

    spec = spec_from_manifest(manifest_of(real_v2_export))
    model = prune_l1(load_checkpoint(real_v2).model, 0.3)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    t, y = np.array([60.0], np.float32), np.array([-1], np.int32)
    got = TFLiteBackend(real_v2_export / name, spec)(x, t, y)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(t), None).numpy()
    rmse = np.sqrt(np.mean((got - ref) ** 2))
    assert 20 * np.log10(np.abs(ref).max() / rmse) > 40


@pytest.mark.slow
def test_pruning_is_reported_honestly(pruned_export):
    m = manifest_of(pruned_export)
    prune = m["compression"]["prune"]
    assert prune["amount"] == 0.3 and prune["global"] >= 0.3
    assert all(v >= 0.3 - 1e-3 for v in prune["layers"].values())
    psnr = prune["pruned_vs_unpruned_psnr_db"]  # the untrained model: pruning moves it more than trained weights
    assert 5 < psnr["min"] <= psnr["mean"] < 80
    assert prune["weights_gzip_bytes"].keys() == {"float32", "float16"}
    for size in prune["weights_gzip_bytes"].values():
        assert size["pruned"] < 0.9 * size["unpruned"]
    assert "makes nothing faster" in (pruned_export / "report.md").read_text()


@pytest.mark.slow
def test_verify_passes_then_catches_a_tampered_byte(real_v2_export, tmp_path):
    res = run("verify", real_v2_export, "--json", "--steps", "10")
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    assert result["passed"] and set(result["trajectory"]) == {"denoiser.onnx", *TFLITE}
    assert set(result["trajectory"]["denoiser_float16.tflite"]["per_class"]) == {"cat", "ship"}
    copy = tmp_path / "v2"
    shutil.copytree(real_v2_export, copy)
    data = bytearray((copy / "denoiser_float16.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "denoiser_float16.tflite").write_bytes(bytes(data))
    res = run("verify", copy, "--classes", "")
    assert res.exit_code == 1
    assert "denoiser_float16.tflite: sha256 mismatch" in res.output


def test_non_builtin_op_is_refused(default_export, tmp_path):
    """Rewrite one opcode as the FlexErf custom op the original file had: the check must fail."""
    out, _ = default_export
    import flatbuffers
    from onnx2tf.tflite_builder.schema import schema_generated as tfl

    model = tfl.ModelT.InitFromPackedBuf(bytearray((out / TFLITE[0]).read_bytes()), 0)
    code = model.operatorCodes[0]
    code.builtinCode, code.deprecatedBuiltinCode, code.customCode = tfl.BuiltinOperator.CUSTOM, 32, "FlexErf"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    bad = tmp_path / "flex.tflite"
    bad.write_bytes(builder.Output())
    with pytest.raises(ExportError, match="CUSTOM:FlexErf"):
        check_builtin_only(bad)


def test_readme_main_command_on_a_fresh_machine(default_export):
    """`mobilegen-export tflite --fp16` with no checkpoint: the labelled default model, with the benchmark."""
    out, res = default_export
    assert {p.name for p in out.iterdir()} == FILES
    m = manifest_of(out)
    assert "NOT a trained model" in m["source"]["checkpoint"] and "untrained" in res.stderr
    lat = m["latency"]
    names = [t["name"] for t in lat["timings"]]
    assert names[:2] == ["pytorch fp32 (original attention)", "pytorch fp32 (fused sdpa)"]
    assert set(names[2:]) == {"denoiser.onnx", *TFLITE}
    assert all(t["median_ms"] > 0 and t["p90_ms"] >= t["median_ms"] for t in lat["timings"])
    assert lat["threads"] >= 1 and lat["machine"]["cores"] and "median ms" in res.output
    assert "Latency per step" in (out / "report.md").read_text()


@pytest.mark.slow
def test_bench_command_writes_bench_json(real_v2_export, tmp_path):
    copy = tmp_path / "v2"
    shutil.copytree(real_v2_export, copy)
    before = (copy / "manifest.json").read_bytes()
    res = run("bench", copy, "--repeats", "3", "--threads", "1")
    assert res.exit_code == 0, res.output + res.stderr
    assert "denoiser_float16.tflite" in res.output and "p90 ms" in res.output
    bench = json.loads((copy / "bench.json").read_text())
    assert bench["threads"] == 1 and bench["repeats"] == 3 and (copy / "manifest.json").read_bytes() == before
    assert run("verify", copy, "--classes", "").exit_code == 0, "benchmarking changes no hashed file"


@pytest.mark.slow
def test_exports_are_deterministic(tmp_path, default_export):
    """Same checkpoint twice -> identical bytes (the default model is a fixed seed)."""
    first, _ = default_export
    out = tmp_path / "again"
    assert run("tflite", "--fp16", "-o", out, "--no-bench").exit_code == 0
    for name in ("denoiser.onnx", *TFLITE, "labels.txt"):
        assert (first / name).read_bytes() == (out / name).read_bytes(), name
    a, b = manifest_of(first), manifest_of(out)
    a.pop("latency")
    for m in (a, b):  # RSS is measured, like latency; the graph's memory figures are the file's own
        for entry in m["files"].values():
            measured = entry.get("memory", {})
            assert measured.get("passed", True), measured
            for key in ("peak_rss_mb", "after_load_mb", "bare_rss_mb", "reset"):
                measured.pop(key, None)
    assert a == b
