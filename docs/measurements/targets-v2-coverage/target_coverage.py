"""Op coverage of an export's TFLite files on the phone's paths (issue 23):

    .venv/bin/python scripts/target_coverage.py DIR [--json OUT.json] [--no-arm64]

For each .tflite file in DIR: the ops LiteRT's GPU accelerator takes and those it leaves to the
CPU (with LiteRT's reason), compiled in its default float16 precision on Mesa's lavapipe; and the
ops XNNPACK delegates when the classic Interpreter loads the file on x86 and on ARM64 (aarch64
LiteRT under qemu, Cortex-A76 model). Prints one block per file and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from mobilegen.runtime.coverage import gpu_coverage, xnnpack_coverage
from mobilegen.runtime.targets import qemu


def command_output(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "not found"


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    from ai_edge_litert import __version__ as litert

    root = Path(__file__).resolve().parents[1]
    return {
        "cpu": cpu,
        "cores": len([ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("processor")]),
        "python": platform.python_version(),
        "ai-edge-litert": litert,
        "mesa-vulkan-drivers": command_output("dpkg-query", "-W", "-f=${Version}", "mesa-vulkan-drivers"),
        "qemu": command_output(qemu() or "qemu-aarch64-static", "--version"),
        "commit": command_output("git", "-C", str(root), "describe", "--always", "--dirty"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", type=Path, help="an export folder (its .tflite files are read)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--no-arm64", action="store_true", help="skip the ARM64 XNNPACK listing (minutes under qemu)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    info = {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "machine": machine(), "files": {}}
    print(json.dumps(info["machine"]))
    for path in sorted(args.directory.glob("*.tflite")):
        row, start = {}, time.perf_counter()
        row["gpu"] = gpu_coverage(path, "fp16", args.threads).to_dict()
        row["xnnpack_x86_64"] = xnnpack_coverage(path, "x86_64", args.threads).to_dict()
        if not args.no_arm64:
            row["xnnpack_arm64"] = xnnpack_coverage(path, "arm64", args.threads).to_dict()
        row["seconds"] = round(time.perf_counter() - start, 1)
        info["files"][path.name] = row
        gpu = row["gpu"]
        print(f"\n{path.name}: {gpu['ops']} ops")
        print(
            f"  GPU (float16): {gpu['gpu_ops']} on the GPU, {gpu['cpu_ops']} on the CPU, fully accelerated: {gpu['fully_accelerated']}"
        )
        for op, reason in gpu["rejected"].items():
            print(f"    rejected {op} ({gpu['rejected_in_file'][op]} in the file): {reason or '(no reason given)'}")
        for key in ("xnnpack_x86_64", "xnnpack_arm64"):
            if key in row:
                x = row[key]
                print(f"  XNNPACK {x['machine']}: {x['delegated']} delegated in {x['partitions']} partitions, "
                      f"not delegated: {x['not_delegated']}")  # fmt: skip
        print(f"  ({row['seconds']} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
