"""The Kotlin library in android/, compiled with Debian's kotlinc and run on the JVM.

What is compiled here: every file of android/src/main/kotlin/ai/mobilegen except
LiteRtDenoiser.kt (it needs the Android LiteRT runtime), plus the test program
android/src/test/kotlin/ai/mobilegen/jvmtest/ (Main.kt, and GuideExamples.kt: the guide's code), against Debian's org.json
(libandroid-json-java, Android's own implementation). What runs: the manifest parser, the
DDIM loop, layout handling and image conversion; eps comes from a closed-form function or,
through tests/android_bridge.py, from the real .tflite files.
"""

from __future__ import annotations

import fcntl
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
from xdist_alone import flocked

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
    """Compile once per run (not once per worker); returns a function that runs the test program."""
    kotlinc = shutil.which("kotlinc")
    if kotlinc is None or not JSON_JAR.is_file() or shutil.which("java") is None:
        pytest.skip("kotlinc or Android's org.json is not installed (scripts/install.sh installs them as root: "
                    "apt-get install kotlin libandroid-json-java)")  # fmt: skip
    # Under pytest-xdist the workers share the run's base folder: the first compiles, the others wait and reuse it.
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    jar = shared / "mobilegen-jvmtest.jar"
    with flocked(shared / "kotlin.lock", fcntl.LOCK_EX):
        if not jar.is_file():
            part = jar.with_suffix(".part.jar")
            res = subprocess.run([kotlinc, "-Werror", *map(str, compiled_sources()), "-cp", str(JSON_JAR), "-include-runtime",
                                  "-d", str(part)], capture_output=True, text=True, timeout=600)  # fmt: skip
            assert res.returncode == 0, res.stdout + res.stderr
            part.rename(jar)

    def run(*args, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["java", "-cp", f"{jar}:{JSON_JAR}", "ai.mobilegen.jvmtest.MainKt", *map(str, args)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        if check:
            assert out.returncode == 0, out.stdout + out.stderr
        return out

    return run


def synthetic_manifest(batch: int = 1, layout: str = "NHWC", results: dict | None = None) -> dict:
    """A manifest with the exporter's own sections (IO contract, schedule, sampler defaults), and with
    `results` ({file: {path name: target_result(...)}}) a `targets` section as `--targets` writes it."""
    schedule = linear_schedule()
    manifest = {"schema_version": mf.SCHEMA_VERSION, "status": "passed", "io": DenoiserSpec(batch=batch, layout=layout).to_dict(),
                "schedule": schedule.to_dict(), "sampler_defaults": mf.sampler_defaults(schedule), "labels": list(CIFAR10_LABELS)}  # fmt: skip
    if results is not None:
        manifest["targets"] = {
            "cases": ["t=999, y=1", "t=500, y=-1", "t=100, y=5", "t=1, y=-1"],
            "trajectory": {"sampler": "ddim", "steps": 10, "guidance": 3.0, "seed": 0, "classes": ["ship"]},
            "runtimes": {
                "gpu": "ai-edge-litert GPU accelerator on Mesa lavapipe",
                "arm64": "ai-edge-litert (aarch64) under qemu",
            },
            "results": results,
        }
    return manifest


def target_result(path: str, step_psnr: float | None, image: tuple[float, float] | None = None, passed: bool = True) -> dict:
    """One (file, path) entry of `targets.results`: image = (PSNR, SSIM) of the guided run (float16 paths)."""
    runtime, precision = path.split("-")[0], path.split("-")[-1]
    entry = {"passed": passed, "failures": [] if passed else ["step: min PSNR 20.0 dB < 40 dB"], "runtime": runtime,
             "precision": precision, "step": {"min_psnr_db": step_psnr, "max_abs_error": 0.002, "gate_min_psnr_db": 35.0}}  # fmt: skip
    if runtime == "gpu":
        entry["coverage"] = {"file": "x.tflite", "ops": 120, "gpu_ops": 120, "cpu_ops": 0, "fully_accelerated": True}
    if image is not None:
        entry["trajectory"] = {"min_psnr_db": image[0], "min_ssim": image[1], "gate_min_psnr_db": 30.0, "gate_min_ssim": 0.95}
    return entry


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


@pytest.mark.slow  # an export and 40 file calls through the bridge; the loop itself is checked quick above
@pytest.mark.parametrize("precision", ["float16", "float32"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_kotlin_image_equals_mobilegen_export_sample(jvm, request, tmp_path, precision, batch, guidance):
    """Same file, label, x_T: the Kotlin image (manifest, loop, layout, pixels all Kotlin; eps from
    the file through the bridge) equals `mobilegen-export sample`'s. Tolerance: at most 1 level
    in at most 0.1% of the values. The two loops differ only in arithmetic: the Python sampler
    keeps x in float32 (torch), the Kotlin one in float64, as mobilegen/runtime/ondevice.py does; a
    difference of ~1e-6 moves a value across a floor() boundary now and then."""
    export = request.getfixturevalue("tiny_export")[0] if batch == 1 else request.getfixturevalue("tiny_b2")
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
    "unknown image conversion": (
        lambda m: m["sampler_defaults"].update(image_from_x="uint8 = round(x * 127.5 + 127.5)"),
        "image_from_x is 'uint8 = round",
    ),  # fmt: skip
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
def test_manifest_reads_a_real_export(jvm, tiny_b2):
    res = jvm("manifest", tiny_b2 / mf.MANIFEST)
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
    out = jvm("example", tmp_path / "manifest.json").stdout.strip()
    assert out.startswith("pixels=4096 distinct=") and out.endswith(" path=CPU log=2"), out  # GPU_FP32 not verified: CPU


FP16 = "denoiser_float16.tflite"
GPU16 = target_result("gpu-fp16", 52.1, (44.3, 0.981))
GPU32 = target_result("gpu-fp32", 127.4)
ARM32 = target_result("arm64-fp32", 122.3)
# name: (results, file, override, the key=value line, the start of the text line)
CHOICES = {
    "no targets: CPU": (None, FP16, None, "path=CPU verified=true step_psnr=null image_psnr=null ssim=null",
                        "CPU float32: verified by the export's parity gates (no ARM64 run for denoiser_float16.tflite"),
    "gpu-fp16 verified": ({FP16: {"gpu-fp32": GPU32, "gpu-fp16": GPU16, "arm64-fp32": ARM32}}, FP16, None,
                          "path=GPU_FP16 verified=true step_psnr=52.1 image_psnr=44.3 ssim=0.981",
                          "GPU float16: verified, per-step >= 52.1 dB, image 44.3 dB / SSIM 0.981 (ddim 10 steps, guidance 3.0)"),
    "only gpu-fp32 listed": ({FP16: {"gpu-fp32": GPU32}}, FP16, None,
                             "path=GPU_FP32 verified=true step_psnr=127.4 image_psnr=null ssim=null",
                             "GPU float32: verified, per-step >= 127.4 dB"),
    "gpu-fp16 failed": ({FP16: {"gpu-fp16": target_result("gpu-fp16", 20.0, (25.0, 0.9), passed=False), "gpu-fp32": GPU32}},
                        FP16, None, "path=GPU_FP32 verified=true", "GPU float32: verified"),
    "other file verified": ({FP16: {"gpu-fp16": GPU16}}, "denoiser_float32.tflite", None, "path=CPU verified=true",
                            "CPU float32: verified by the export's parity gates (no ARM64 run"),
    "unknown path name is never chosen": ({FP16: {"npu-int8": target_result("npu-int8", 60.0)}}, FP16, None,
                                          "path=CPU verified=true", "CPU float32: verified"),
    "override, not verified": ({FP16: {"gpu-fp32": GPU32}}, FP16, "GPU_FP16",
                               "path=GPU_FP16 verified=false step_psnr=null image_psnr=null ssim=null",
                               "GPU float16: NOT verified for denoiser_float16.tflite (export with --targets gpu)"),
    "override to a failed path": ({FP16: {"gpu-fp16": target_result("gpu-fp16", 20.0, passed=False)}}, FP16, "GPU_FP16",
                                  "path=GPU_FP16 verified=false step_psnr=20.0",
                                  "GPU float16: NOT verified for denoiser_float16.tflite (gpu-fp16 failed: step: min PSNR 20.0"),
    "override to CPU, ARM64 figures": ({FP16: {"gpu-fp16": GPU16, "arm64-fp32": ARM32}}, FP16, "CPU",
                                       "path=CPU verified=true step_psnr=122.3 image_psnr=null ssim=null",
                                       "CPU float32: verified by the export's parity gates; on ARM64 per-step >= 122.3 dB"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CHOICES))
def test_choose_path_picks_only_a_verified_path(jvm, tmp_path, case):
    """Manifest.choosePath: GPU float16, else GPU float32, where the export verified them on that file,
    else the CPU; an override is honoured and says whether it was verified."""
    results, file, override, line, text = CHOICES[case]
    (tmp_path / "manifest.json").write_text(json.dumps(synthetic_manifest(results=results)))
    out = jvm("path", tmp_path / "manifest.json", file, *([override] if override else [])).stdout.splitlines()
    assert out[0].startswith(line) and out[1].startswith(text), out


AT = f"targets.results.{FP16}.gpu-fp16"
# name: (change(targets, the gpu-fp16 entry of FP16), what the refusal says)
TARGET_REFUSALS = {
    "passed is a string": (lambda t, e: e.update(passed="yes"), f"field '{AT}.passed' is not true or false"),
    "results not an object": (lambda t, e: t.update(results=[]), "field 'targets.results' is not an object"),
    "PSNR is a string": (lambda t, e: e["step"].update(min_psnr_db="52.1"), f"field '{AT}.step.min_psnr_db' is not a number"),
    "missing gate": (lambda t, e: e["step"].pop("gate_min_psnr_db"), f"missing field '{AT}.step.gate_min_psnr_db'"),
    "missing SSIM": (lambda t, e: e["trajectory"].pop("min_ssim"), f"missing field '{AT}.trajectory.min_ssim'"),
    "arithmetic disagrees with the name": (lambda t, e: e.update(precision="fp32"), f"field '{AT}.precision' is not 'fp16'"),
    "coverage count": (lambda t, e: e["coverage"].update(cpu_ops=0.5), f"field '{AT}.coverage.cpu_ops' is not an integer"),
    "trajectory settings": (lambda t, e: t["trajectory"].update(steps="10"), "field 'targets.trajectory.steps' is not an integer"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TARGET_REFUSALS))
def test_manifest_refuses_a_malformed_targets_section(jvm, tmp_path, case):
    change, message = TARGET_REFUSALS[case]
    manifest = synthetic_manifest(results={FP16: {"gpu-fp16": target_result("gpu-fp16", 52.1, (44.3, 0.981))}})
    change(manifest["targets"], manifest["targets"]["results"][FP16]["gpu-fp16"])
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    res = jvm("path", tmp_path / "manifest.json", FP16, check=False)
    assert res.returncode == 3 and "ManifestException" in res.stderr and message in res.stderr, res.stdout + res.stderr


@pytest.mark.slow  # the export behind it checks the GPU path: about a minute
def test_kotlin_picks_the_gpu_path_a_real_export_verified(jvm, tiny_targets_export):
    out, _ = tiny_targets_export
    res = jvm("path", out / mf.MANIFEST, "denoiser_float16.tflite")
    assert res.stdout.startswith("path=GPU_FP16 verified=true"), res.stdout
    forced = jvm("path", out / mf.MANIFEST, "denoiser_float16.tflite", "GPU_FP32")
    assert forced.stdout.startswith("path=GPU_FP32 verified=false"), forced.stdout


def test_kotlin_picks_gpu_float16_for_the_real_v2_export(jvm):
    """The committed manifest of the real v2 exported with --targets gpu (docs/measurements/targets-v2-export/)."""
    manifest = ROOT / "docs" / "measurements" / "targets-v2-export" / "manifest.json"
    for name in ("denoiser_float32.tflite", "denoiser_float16.tflite"):
        res = jvm("path", manifest, name)
        assert res.stdout.startswith("path=GPU_FP16 verified=true step_psnr=51."), res.stdout
        assert "image 44.3 dB" in res.stdout
