"""`mobilegen-export bench` (jobs/bench.py): its measurements go to bench.json beside the manifest."""

from __future__ import annotations

import json

import pytest
from helpers import run


@pytest.mark.slow
def test_bench_command_writes_bench_json(export_copy):
    copy = export_copy
    before = (copy / "manifest.json").read_bytes()
    res = run("bench", copy, "--repeats", "3", "--threads", "1")
    assert res.exit_code == 0, res.output + res.stderr
    assert "denoiser_float16.tflite" in res.output and "p90 ms" in res.output
    bench = json.loads((copy / "bench.json").read_text())
    assert bench["threads"] == 1 and bench["repeats"] == 3 and (copy / "manifest.json").read_bytes() == before
    assert run("verify", copy, "--classes", "").exit_code == 0, "benchmarking changes no hashed file"


def test_a_changed_file_is_refused_before_anything_is_measured(tiny_export, tmp_path):
    import shutil

    import pytest

    from mobilegen.errors import MobileGenError
    from mobilegen.jobs.bench import bench_directory

    folder = tmp_path / "v2"
    shutil.copytree(tiny_export[0], folder)
    (folder / "bench.json").unlink(missing_ok=True)
    data = bytearray((folder / "denoiser_float16.tflite").read_bytes())
    data[-100] ^= 1
    (folder / "denoiser_float16.tflite").write_bytes(bytes(data))
    with pytest.raises(MobileGenError, match="denoiser_float16.tflite: sha256 mismatch"):
        bench_directory(folder, None, threads=1, repeats=3)
    assert not (folder / "bench.json").exists()
