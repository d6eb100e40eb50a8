"""report.md (verify/report_md.py) is rendered from the manifest alone."""

from __future__ import annotations

from helpers import manifest_of

from mobilegen.verify.report_md import number, render


def test_a_non_finite_figure_reads_nan_inf():
    assert number(None) == "NaN/Inf" and number(0.000123) == "1.23e-04"


def test_the_exports_report_is_its_manifest_rendered(tiny_export):
    out = tiny_export[0]
    manifest = manifest_of(out)
    text = render(manifest)
    written = (out / "report.md").read_text().splitlines()
    # The export renders its in-memory manifest, where the IO shapes are tuples: "(1, 64, 64, 3)",
    # not the "[1, 64, 64, 3]" that JSON reads back; every other line is the same.
    io_line = [i for i, line in enumerate(written) if line.startswith("IO contract:")]
    assert [line for i, line in enumerate(written) if i not in io_line] == [
        line for i, line in enumerate(text.splitlines()) if i not in io_line]  # fmt: skip
    assert text.startswith("# MobileGen export: student_v2 - status: **PASSED**")
    for name in manifest["files"]:
        assert f"| {name} |" in text
    assert "No pruning." in text and "## Memory of one step" in text and "## Latency per step" in text


def test_the_phone_paths_are_a_table_with_a_lost_image_said_so():
    """The committed manifest of the real v2 exported with --targets gpu, and the same with a lost image."""
    import copy
    import json

    from helpers import ROOT

    manifest = json.loads((ROOT / "docs/measurements/targets-v2-export/manifest.json").read_text())
    text = render(manifest)
    assert "## On the phone's paths" in text and "targets.png (PyTorch fp32, x86 float32" in text
    assert "| denoiser_float16.tflite | gpu-fp16 | pass | 51.8 | 40 | 44.3 / 0.9813 | 835/835 GPU |" in text
    assert "| denoiser_float32.tflite | gpu-fp32 | pass | 128.2 | 80 | - | 766/766 GPU |" in text
    broken = copy.deepcopy(manifest)
    entry = broken["targets"]["results"]["denoiser_float16.tflite"]["gpu-fp16"]
    entry.update(passed=False, step=dict(entry["step"], min_psnr_db=None), trajectory=dict(entry["trajectory"], min_psnr_db=None))
    assert "| denoiser_float16.tflite | gpu-fp16 | FAIL | NaN/Inf | 40 | lost | 835/835 GPU |" in render(broken)
    assert "## On the phone's paths" not in render({k: v for k, v in manifest.items() if k != "targets"})
