"""`mobilegen-export report` (jobs/report.py): the HTML report renders offline in a real browser."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import run_export

from mobilegen.jobs.report import latest_bench

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tiny_export, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    out = tmp_path / "v"
    shutil.copytree(tiny_export[0], out)
    res = run_export("report", out, "--classes", "cat,ship", "--steps", "10")
    assert "wrote" in res.output
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: errors.append(f"network request {r.url}") if not r.url.startswith(("file:", "data:")) else None)
        page.goto((out / "report.html").as_uri())
        loaded = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
        text = page.inner_text("body")
        browser.close()
    # 4 backend grids + error curves + latency + sizes
    assert len(loaded) == 7 and all(loaded)
    assert errors == []
    for needle in ("pytorch fp32", "denoiser_float16.tflite", "Trajectory parity", "images per second"):
        assert needle.lower() in text.lower()


def test_only_a_bench_of_this_very_manifest_is_drawn(tmp_path):
    from mobilegen.files import sha256_file

    (tmp_path / "manifest.json").write_text('{"schema_version": 1}')
    assert latest_bench(tmp_path) is None  # no bench.json
    (tmp_path / "bench.json").write_text('{"manifest_sha256": "%s", "table": "t"}' % sha256_file(tmp_path / "manifest.json"))
    assert latest_bench(tmp_path)["table"] == "t"
    (tmp_path / "manifest.json").write_text('{"schema_version": 1, "status": "passed"}')
    assert latest_bench(tmp_path) is None, "measured another manifest"
    (tmp_path / "bench.json").write_text('{"a": 1, "a": 2}')
    assert latest_bench(tmp_path) is None, "not strict JSON"
