"""The bench job (`mobilegen-export bench DIR`): per-step latency of PyTorch and every file,
and each one's peak RSS in a fresh process. Read only: the manifest is never rewritten;
the measurement goes to DIR/bench.json (contract.defaults.BENCH_JSON), replaced whole."""

from __future__ import annotations

from pathlib import Path

from mobilegen.contract import manifest as mf
from mobilegen.contract.defaults import BENCH_JSON
from mobilegen.files import sha256_file, write_json
from mobilegen.verify.folder import artifacts, intact_folder, reference_model


def bench_memory(directory: Path, manifest: dict, checkpoint: Path | None, threads: int | None) -> dict[str, dict]:
    """Peak RSS of every file and of PyTorch (fused SDPA, and the math form bounded like the files), each in a fresh process."""
    from mobilegen.runtime.backends import default_threads
    from mobilegen.verify.memory import contract_feeds, measure_file, measure_torch

    spec, threads = mf.spec_from_manifest(manifest), threads or default_threads()
    source = str(checkpoint) if checkpoint else manifest["source"]["checkpoint"] if manifest["source"]["sha256"] else None
    budget = next((f["memory"].get("max_tensor_mb") for f in manifest["files"].values() if "memory" in f), None)
    out = {
        "pytorch fp32 (fused sdpa)": measure_torch(source, spec.batch, threads, "sdpa"),
        "pytorch fp32 (math, bounded)": measure_torch(source, spec.batch, threads, "math", budget),
    }
    for name, path in artifacts(directory, manifest).items():
        out[name] = measure_file(path, contract_feeds(spec), threads)
    return out


def bench_directory(
    directory: Path,
    checkpoint: Path | None,
    threads: int | None,
    repeats: int,
    foreign: tuple[Path, dict[str, str]] | None = None,
) -> dict:
    """The latency table and memory of every file; written to DIR/bench.json and returned."""
    from mobilegen.verify.bench import bench_directory_files

    manifest = intact_folder(directory, threads)
    model = reference_model(manifest, checkpoint, directory).model
    spec = mf.spec_from_manifest(manifest)
    latency = bench_directory_files(model, artifacts(directory, manifest), spec, threads, repeats=repeats, foreign=foreign)
    latency["memory"] = bench_memory(directory, manifest, checkpoint, threads)
    latency["manifest_sha256"] = sha256_file(directory / mf.MANIFEST)  # which export was measured
    write_json(directory / BENCH_JSON, latency)
    return latency
