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
# library in android/ (tests/android/test_kotlin.py skips without them).
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
(
# The phone runtimes beside x86 LiteRT (issue 23), called by scripts/install.sh; safe to rerun.
#   gpu:   LiteRT's GPU accelerator (in the ai-edge-litert wheel) on Mesa's lavapipe, a CPU Vulkan
#          driver. Bookworm's Mesa 22.3.6 is refused ("No adapters found"); backports' 25.0 works.
#   arm64: the aarch64 ai-edge-litert wheel under qemu-user, in a folder of arm64 Debian packages
#          unpacked with dpkg -x (no chroot, no root needed to run it): .deps/arm64-root.
# Pinned: Mesa, the wheels, Python 3.11 (the wheels' ABI). The arm64 libraries and qemu come from
# bookworm (stable: security updates only); the versions used are written to .deps/arm64-root/VERSIONS.
MESA_VERSION="${MESA_VERSION:-25.0.7-2~bpo12+1}"
ROOT=.deps/arm64-root
WHEELS=(ai-edge-litert==2.3.0 numpy==2.4.6 flatbuffers==25.12.19 ml_dtypes==0.7.0 protobuf==7.36.2
        tqdm==4.70.1 typing_extensions==4.16.0 backports.strenum==1.2.8)
DEBS=(python3.11 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libgcc-s1 libstdc++6
      zlib1g libexpat1 libssl3 libffi8 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libncursesw6 libtinfo6
      libreadline8 libcrypt1 libdb5.3 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3
      libkrb5support0 libcom-err2 libkeyutils1)
STAMP="$ROOT/.installed-v1-$(echo "${WHEELS[*]} ${DEBS[*]}" | sha256sum | cut -c1-12)"
python=.venv/bin/python
can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null && grep -qs bookworm /etc/os-release; }
apt_quiet() { DEBIAN_FRONTEND=noninteractive apt-get -qq -o APT::Sandbox::User=root "$@" > /dev/null; }

# --- gpu: Mesa lavapipe 25.x from bookworm-backports ---------------------------------------------
if [ "$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2> /dev/null || true)" != "$MESA_VERSION" ]; then
  if can_apt; then
    if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/bookworm-backports.list
    fi
    apt_quiet update
    apt_quiet install -y -t bookworm-backports "mesa-vulkan-drivers=$MESA_VERSION" libvulkan1 ||
      echo "note: apt could not install mesa-vulkan-drivers=$MESA_VERSION from bookworm-backports; the gpu target tests will skip" >&2
  else
    echo "note: Mesa $MESA_VERSION (lavapipe) is not installed (as root on Debian bookworm: apt-get install -t bookworm-backports mesa-vulkan-drivers=$MESA_VERSION); the gpu target tests will skip" >&2
  fi
fi
"$python" -c 'import ai_edge_litert, pathlib; p = pathlib.Path(ai_edge_litert.__file__).with_name("libLiteRtWebGpuAccelerator.so"); assert p.is_file(), p' ||
  echo "note: the venv's ai-edge-litert has no GPU accelerator (libLiteRtWebGpuAccelerator.so); reinstall ai-edge-litert==2.3.0" >&2

# --- arm64: qemu-user and an arm64 Python with the aarch64 LiteRT wheel ---------------------------
if ! command -v qemu-aarch64-static > /dev/null; then
  if can_apt; then apt_quiet update && apt_quiet install -y qemu-user-static || echo "note: apt could not install qemu-user-static" >&2; else
    echo "note: qemu-user-static is not installed (apt-get install qemu-user-static); the arm64 target tests will skip" >&2
  fi
fi
if [ ! -f "$STAMP" ]; then
  if can_apt; then
    dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64 && apt_quiet update; }
    apt-cache show python3.11:arm64 > /dev/null 2>&1 || apt_quiet update
    tmp="$ROOT.partial"
    rm -rf "$tmp" && mkdir -p "$tmp/debs" "$tmp/site"
    (cd "$tmp/debs" && apt_quiet download "${DEBS[@]/%/:arm64}")
    for deb in "$tmp"/debs/*.deb; do dpkg -x "$deb" "$tmp"; done
    (cd "$tmp/debs" && ls) > "$tmp/VERSIONS" && rm -r "$tmp/debs"
    "$python" -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --no-deps --target "$tmp/site" \
      --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 \
      --python-version 3.11 --implementation cp --only-binary=:all: "${WHEELS[@]}"
    printf '%s\n' "${WHEELS[@]}" >> "$tmp/VERSIONS"
    # XNNPACK's cpuinfo crashes on the host's x86 /proc/cpuinfo. qemu -L PREFIX opens PREFIX/proc/cpuinfo
    # instead when it exists, so each CPU model gets a prefix: its own proc/cpuinfo, the rest linked.
    write_cpu() {  # name, variant, part, revision, features
      mkdir -p "$tmp/cpu/$1/proc"
      for d in lib usr etc; do ln -sfn "../../$d" "$tmp/cpu/$1/$d"; done
      printf 'processor\t: 0\nBogoMIPS\t: 38.40\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
        "$5" "$2" "$3" "$4" > "$tmp/cpu/$1/proc/cpuinfo"
    }
    write_cpu cortex-a76 0x4 0xd0b 1 "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
    write_cpu cortex-a53 0x0 0xd03 4 "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
    rm -rf "$ROOT" && mv "$tmp" "$ROOT" && touch "$STAMP"
  else
    echo "note: $ROOT is not set up (needs root and apt on Debian bookworm); the arm64 target tests will skip" >&2
  fi
fi
if [ -f "$STAMP" ] && command -v qemu-aarch64-static > /dev/null; then
  PYTHONPATH="$ROOT/site" qemu-aarch64-static -cpu cortex-a76 -L "$ROOT/cpu/cortex-a76" "$ROOT/usr/bin/python3.11" -c \
    'import platform, ai_edge_litert.interpreter, numpy; print("arm64 target:", platform.machine(), platform.python_version(), "numpy", numpy.__version__)'
fi
)
.venv/bin/mobilegen-export --help > /dev/null
echo "installed: $(.venv/bin/python -c 'import mobilegen, torch, onnx2tf, ray; print("torch", torch.__version__, "onnx2tf", onnx2tf.__version__, "ray", ray.__version__)')"
