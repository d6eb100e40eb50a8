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
