"""One home for the names of an export folder's files and for the defaults that the CLI
and the library share (tests/contract/test_defaults.py checks that they agree)."""

from __future__ import annotations

# Files an export folder holds besides the denoisers (contract/spec.py names those).
MANIFEST_FILE = "manifest.json"
LABELS_FILE = "labels.txt"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"  # written by `mobilegen-export report`
# What the read-only commands measure goes beside the manifest, never into it.
BENCH_JSON = "bench.json"  # `mobilegen-export bench`
TRAJECTORY_JSON = "trajectory.json"  # `mobilegen-export report`
PROFILE_JSON = "profile.json"  # `mobilegen-export profile`
PROFILE_MD = "profile.md"
TARGETS_PNG = "targets.png"  # the phone paths' images, written by an export with --targets

# Export defaults.
BATCH = 1
FP16 = False  # `--fp16` opts in to denoiser_float16.tflite
LAYOUT = {"onnx": "NCHW", "tflite": "NHWC"}  # the layout each command's files take x and eps in
# 4 MB per image: the sa6 scores in chunks of 64 query rows; measured on the real v2 the
# fastest budget that meets the memory targets (docs/performance.md "Memory").
TENSOR_MB = 4.0
# How a bounded attention block is split (models/budget.py): "per-head" takes one head (or the
# largest group of heads whose every row fits) at a time, "all-heads" all heads and fewer rows.
# per-head: 1.15x the step speed of all-heads on the real v2 (docs/performance.md, measured
# on an AVX-512 Xeon only), the same numbers per query row.
ATTENTION_SPLITS = ("per-head", "all-heads")
ATTENTION_SPLIT = "per-head"
CALIBRATION_SAMPLES = 320
PRUNE = 0.0
BENCH_REPEATS = 20
CLASSES = "cat,ship"  # the trajectory check's labels: CI-sized

# The phone paths (runtime/targets.py TARGETS), named here so the CLI lists them without
# importing the runtimes.
TARGET_NAMES = ("gpu-fp16", "gpu-fp32", "arm64-fp32", "arm64-fp16", "arm64-a53-fp32")
# What `--targets gpu` and `--targets arm64` stand for.
TARGET_GROUPS = {"gpu": ("gpu-fp16", "gpu-fp32"), "arm64": ("arm64-fp32", "arm64-fp16")}
