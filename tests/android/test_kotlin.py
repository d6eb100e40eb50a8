"""The Kotlin library in android/, compiled with Debian's kotlinc and run on the JVM.

What is compiled here: every file of android/src/main/kotlin/ai/mobilegen except
LiteRtDenoiser.kt (it needs the Android LiteRT runtime), plus the test program
android/src/test/kotlin/ai/mobilegen/jvmtest/ (Main.kt, and GuideExamples.kt: the guide's code), against Debian's org.json
(libandroid-json-java, Android's own implementation). What runs: the manifest parser, the
DDIM loop, layout handling and image conversion; eps comes from a closed-form function or,
through tests/android_bridge.py, from the real .tflite files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, run_export

from mobilegen.contract import manifest as mf
from mobilegen.contract.labels import CIFAR10_LABELS
from mobilegen.contract.spec import DenoiserSpec
from mobilegen.diffusion import linear_schedule
from mobilegen.runtime.ondevice import sample_loop

ANDROID = ROOT / "android"
LIBRARY_DIR = ANDROID / "src" / "main" / "kotlin" / "ai" / "mobilegen"
NOT_COMPILED = ("LiteRtDenoiser.kt",)  # needs org.tensorflow.lite.Interpreter (Android LiteRT)
TEST_PROGRAM_DIR = ANDROID / "src" / "test" / "kotlin" / "ai" / "mobilegen" / "jvmtest"  # Main.kt, GuideExamples.kt
JSON_JAR = Path("/usr/share/java/com.android.json.jar")
BRIDGE = ROOT / "tests" / "android_bridge.py"
SHIP = CIFAR10_LABELS.index("ship")
STEPS = 20  # DDIM steps of the real-file runs (50 would triple the test's time and check nothing new)


def compiled_sources() -> list[Path]:
    return [p for p in sorted(LIBRARY_DIR.glob("*.kt")) if p.name not in NOT_COMPILED] + sorted(TEST_PROGRAM_DIR.glob("*.kt"))


@pytest.fixture(scope="session")
def jvm(tmp_path_factory):
    """Compile once per run; returns a function that runs the test program."""
    kotlinc = shutil.which("kotlinc")
    if kotlinc is None or not JSON_JAR.is_file() or shutil.which("java") is None:
        pytest.skip("kotlinc or Android's org.json is not installed (scripts/install.sh installs them as root: "
                    "apt-get install kotlin libandroid-json-java)")  # fmt: skip
    jar = tmp_path_factory.mktemp("kotlin") / "mobilegen-jvmtest.jar"
    res = subprocess.run([kotlinc, "-Werror", *map(str, compiled_sources()), "-cp", str(JSON_JAR), "-include-runtime",
                          "-d", str(jar)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr

    def run(*args, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["java", "-cp", f"{jar}:{JSON_JAR}", "ai.mobilegen.jvmtest.MainKt", *map(str, args)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        if check:
            assert out.returncode == 0, out.stdout + out.stderr
        return out

    return run


def synthetic_manifest(batch: int = 1, layout: str = "NHWC") -> dict:
    """A manifest with the exporter's own sections (IO contract, schedule, sampler defaults)."""
    schedule = linear_schedule()
    return {"schema_version": mf.SCHEMA_VERSION, "status": "passed", "io": DenoiserSpec(batch=batch, layout=layout).to_dict(),
            "schedule": schedule.to_dict(), "sampler_defaults": mf.sampler_defaults(schedule), "labels": list(CIFAR10_LABELS)}  # fmt: skip


def write_noise(path: Path, seed: int) -> np.ndarray:
    """x_T exactly as `mobilegen-export sample --seed` draws it (NCHW)."""
    x = torch.randn((1, 3, 64, 64), generator=torch.Generator().manual_seed(seed), dtype=torch.float32).numpy()
    path.write_bytes(x.astype("<f4").tobytes())
    return x


def closed_form(layout: str):
    """The formula of Main.kt's ClosedForm: 0.5 sin(x (1 + t/1000)) + 0.1 channel + 0.01 (y + 1)."""
    channel = np.arange(3).reshape((1, 1, 1, 3) if layout == "NHWC" else (1, 3, 1, 1))

    def call(x, t, y):
        t64 = t.astype(np.float64)[:, None, None, None]
        y64 = y.astype(np.float64)[:, None, None, None]
        return (0.5 * np.sin(x.astype(np.float64) * (1 + t64 / 1000.0)) + 0.1 * channel + 0.01 * (y64 + 1)).astype(np.float32)

    return call


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_kotlin_loop_matches_ondevice_reference_at_every_step(jvm, tmp_path, layout, batch, guidance):
    manifest = synthetic_manifest(batch, layout)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    noise = write_noise(tmp_path / "xT.f32", seed=5)
    states = []
    sample_loop(closed_form(layout), manifest, 3, noise, steps=STEPS, guidance=guidance, on_step=lambda t, x: states.append(x[0]))
    jvm("closed-form", tmp_path / "manifest.json", tmp_path / "xT.f32", 3, guidance, STEPS, tmp_path / "states.f64")
    kotlin = np.frombuffer((tmp_path / "states.f64").read_bytes(), "<f8").reshape(len(states), *states[0].shape)
    for k, state in enumerate(states):
        err = np.abs(kotlin[k] - state).max()
        assert err <= 1e-6, f"step {k}: max |x_kotlin - x_numpy| = {err:.3g}"
    assert np.abs(kotlin[-1]).max() > 0.1  # a real trajectory, not zeros


def python_sample(path: Path, guidance: float, out: Path) -> np.ndarray:
    from PIL import Image

    run_export("sample", path, "--label", "ship", "--seed", 7, "--steps", STEPS, "--guidance", guidance, "-o", out)
    return np.asarray(Image.open(out).convert("RGB"))


# Quick: the guided float16 image at batch 1 (the app's case); the other files and guidance off run with --slow.
@pytest.mark.parametrize("precision", ["float16", pytest.param("float32", marks=pytest.mark.slow)])
@pytest.mark.parametrize("batch", [1, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.parametrize("guidance", [pytest.param(0.0, marks=pytest.mark.slow), 3.0])
def test_kotlin_image_equals_mobilegen_export_sample(jvm, request, tmp_path, precision, batch, guidance):
    """Same file, label, x_T: the Kotlin image (manifest, loop, layout, pixels all Kotlin; eps from
    the file through the bridge) equals `mobilegen-export sample`'s. Tolerance: at most 1 level
    in at most 0.1% of the values. The two loops differ only in arithmetic: the Python sampler
    keeps x in float32 (torch), the Kotlin one in float64, as mobilegen/runtime/ondevice.py does; a
    difference of ~1e-6 moves a value across a floor() boundary now and then."""
    export = request.getfixturevalue("default_export")[0] if batch == 1 else request.getfixturevalue("default_b2")
    path = export / f"denoiser_{precision}.tflite"
    ref = python_sample(path, guidance, tmp_path / "ref.png")
    write_noise(tmp_path / "xT.f32", seed=7)
    res = jvm("bridge", export / mf.MANIFEST, tmp_path / "xT.f32", SHIP, guidance, STEPS, tmp_path / "kotlin.u8",
              sys.executable, BRIDGE, path)  # fmt: skip
    calls = STEPS * (2 if guidance > 0 and batch == 1 else 1)  # batch 2 packs the guided pair into one call
    assert f"calls={calls}" in res.stderr
    kotlin = np.frombuffer((tmp_path / "kotlin.u8").read_bytes(), np.uint8).reshape(64, 64, 3)
    diff = np.abs(kotlin.astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, f"max diff {diff.max()}, {(diff > 0).sum()} values differ"
    assert ref.std() > 1  # a real image, not a flat one


REFUSALS = {
    "failed export": (lambda m: m.update(status="failed"), "status is 'failed'"),
    "unknown schema_version": (lambda m: m.update(schema_version=2), "schema_version 2"),
    "missing field": (lambda m: m["io"].pop("layout"), "missing field 'io.layout'"),
    "missing section": (lambda m: m.pop("schedule"), "missing field 'schedule'"),
    "wrong layout": (lambda m: m["io"].update(layout="NWHC"), "io.layout is 'NWHC'; expected NCHW or NHWC"),
    "layout disagrees with shapes": (lambda m: m["io"].update(layout="NCHW"), "x has shape [1, 64, 64, 3], but io.layout NCHW"),
    "unknown image conversion": (lambda m: m["sampler_defaults"].update(image_from_x="uint8 = round(x * 127.5 + 127.5)"),
                                 "image_from_x is 'uint8 = round"),  # fmt: skip
    "wrong type": (lambda m: m["io"].update(batch="1"), "field 'io.batch' is not an integer"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_manifest_refuses_what_it_cannot_run(jvm, tmp_path, case):
    change, message = REFUSALS[case]
    manifest = synthetic_manifest()
    change(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    res = jvm("manifest", tmp_path / "manifest.json", check=False)
    assert res.returncode == 3 and "ManifestException" in res.stderr, res.stdout + res.stderr
    assert message in res.stderr


@pytest.mark.parametrize("where", ["top", "nested"])
def test_manifest_refuses_a_repeated_key(jvm, tmp_path, where):
    """org.json keeps the last value of a repeated key; the library refuses it, as the exporter's checker does."""
    text = json.dumps(synthetic_manifest())
    if where == "top":
        text = text.replace('{"schema_version"', '{"status": "failed", "schema_version"', 1)  # then "status": "passed"
        key = "status"
    else:
        text = text.replace('"sampler_defaults": {', '"sampler_defaults": {"guidance": 9.0, ', 1)
        key = "sampler_defaults.guidance"
    (tmp_path / "manifest.json").write_text(text)
    res = jvm("manifest", tmp_path / "manifest.json", check=False)
    assert res.returncode == 3 and f"key '{key}' appears twice" in res.stderr, res.stdout + res.stderr


@pytest.mark.slow
def test_manifest_reads_a_real_export(jvm, default_b2):
    res = jvm("manifest", default_b2 / mf.MANIFEST)
    assert res.stdout.strip() == "ok batch=2 layout=NHWC T=1000 steps=50 guidance=3.0 labels=10"


def test_ddim_timesteps_equal_the_python_sampler(jvm):
    from mobilegen.diffusion.ddim import ddim_timesteps

    for steps in (1, 2, 20, 50, 999):
        assert jvm("timesteps", 1000, steps).stdout.strip() == ",".join(map(str, ddim_timesteps(linear_schedule(), steps)))


def test_every_kotlin_block_of_the_guide_is_compiled_or_android_only(jvm, tmp_path):
    """docs/android.md's Kotlin blocks are verbatim from compiled sources (GuideExamples.kt, the
    library), or from LiteRtDenoiser.kt, the one Android-only file; the examples run."""
    import re

    blocks = re.findall(r"```kotlin\n(.*?)```", (ROOT / "docs" / "android.md").read_text(), re.S)
    compiled = "\n".join(p.read_text() for p in compiled_sources())
    android_only = [b for b in blocks if b not in compiled]
    assert len(blocks) >= 4 and all(b in (LIBRARY_DIR / "LiteRtDenoiser.kt").read_text() for b in android_only)
    assert len(android_only) <= 1
    (tmp_path / "manifest.json").write_text(json.dumps(synthetic_manifest()))
    assert jvm("example", tmp_path / "manifest.json").stdout.strip().startswith("pixels=4096 distinct=")
