#!/usr/bin/env bash
# The README's install command: a virtual environment in .venv with everything MobileGen needs.
set -euo pipefail
if [ $# -gt 0 ]; then
  echo "usage: bash scripts/install.sh  (no arguments; PYTHON=/path/to/python3.11+ picks the interpreter)" >&2
  case "$1" in -h|--help) exit 0 ;; *) echo "error: unexpected argument '$1'" >&2; exit 2 ;; esac
fi
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and exactly pinned, so nothing later can pull a CUDA build.
"${pip[@]}" torch==2.13.0
# dev: the test tools; ray: Ray Serve for `mobilegen serve --ray` (pinned in pyproject.toml).
"${pip[@]}" -e '.[dev,ray]'
# onnx2tf 2.6.9 declares Python >= 3.12 but runs on 3.11 (its 3.12-only syntax is not
# on our code path; the test suite converts with it). --ignore-requires-python would
# apply to every dependency, so it is installed alone, without dependencies; the
# modules it needs are pinned in pyproject.toml.
"${pip[@]}" --no-deps --ignore-requires-python onnx2tf==2.6.9
# Debian's Chromium renders report.html in the test suite (headless; the tests download nothing).
if ! command -v chromium > /dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null
  else
    echo "note: chromium is not installed (apt-get install chromium); the report-rendering test will skip" >&2
  fi
fi
# Debian's kotlinc and Android's org.json for the JVM: the test suite compiles and runs the Kotlin
# library in android/ (tests/test_android.py skips without them).
if ! command -v kotlinc > /dev/null || [ ! -f /usr/share/java/com.android.json.jar ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kotlin libandroid-json-java > /dev/null
  else
    echo "note: kotlin / libandroid-json-java are not installed (apt-get install kotlin libandroid-json-java); the Kotlin tests will skip" >&2
  fi
fi
# tflite-support's generated flatbuffer readers read the TFLite metadata back in the tests,
# independently of our writer. Its compiled modules and dependencies (protobuf < 4) conflict with
# ours, so it goes into .deps/, without dependencies, never into the venv.
[ -f .deps/tflite-support/tensorflow_lite_support/metadata/metadata_schema_py_generated.py ] ||
  "${pip[@]}" --no-deps --target .deps/tflite-support tflite-support==0.4.4
# The phone runtimes (issue 23): LiteRT's GPU accelerator on Mesa lavapipe, and ARM64 LiteRT under qemu.
bash scripts/install-targets.sh
.venv/bin/mobilegen-export --help > /dev/null
echo "installed: $(.venv/bin/python -c 'import mobilegen, torch, onnx2tf, ray; print("torch", torch.__version__, "onnx2tf", onnx2tf.__version__, "ray", ray.__version__)')"
