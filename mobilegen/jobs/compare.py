"""The compare job (`mobilegen-export compare`): fp32 vs fp16 vs int8 dynamic vs int8 full vs structured-pruned, measured in one run.

Every file is built here without gates (a variant that misses its gate is still
measured: that is the point of the table), from one unpruned checkpoint and one
structurally pruned one. Everything is measured against the UNPRUNED PyTorch fp32
model, on the same machine, in the same process, with the same thread count:

- size of the file; parameters and MACs per step of the network it runs;
- per-step latency, batch 1: the files take turns for `rounds` rounds of `repeats`
  calls each (so a slow phase of a shared machine hits them all), median and p90;
- per-step PSNR of eps on the fixed parity set (diffusion/cases.py);
- DDIM trajectories from the same noise: final-image PSNR and SSIM, worst class;
- the final images, one row per variant (samples.png);
- memory: peak RSS of each file in a fresh process (verify/memory.py), its largest
  tensor; the fp32 file with unbounded attention is a row of its own, to show what the
  bounded attention costs or gains in speed; a foreign file (``foreign``, e.g. the
  original project's own) runs in the same rounds.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mobilegen.compress import count_macs, count_params
from mobilegen.contract import defaults
from mobilegen.contract.labels import CIFAR10_LABELS
from mobilegen.contract.spec import ONNX_FILE, TFLITE_FP16, TFLITE_FP32, TFLITE_INT8, DenoiserSpec
from mobilegen.diffusion import SamplerConfig, linear_schedule
from mobilegen.diffusion.cases import forward_process_cases
from mobilegen.export.build import BuildOptions, build
from mobilegen.files import atomic_write, check_output_file, write_json
from mobilegen.models.checkpoint import LoadedModel
from mobilegen.runtime.backends import TorchBackend, default_threads, open_artifact
from mobilegen.runtime.images import save_image
from mobilegen.runtime.tflite_file import check_builtin_only
from mobilegen.verify.bench import compute_floor
from mobilegen.verify.foreign import ForeignTFLite
from mobilegen.verify.memory import contract_feeds, measure_file, measure_torch
from mobilegen.verify.parity import PSNR_IDENTICAL, psnr
from mobilegen.verify.timing import machine, machine_line, summarize, time_calls
from mobilegen.verify.trajectory import compare_runs, record

SPEC = DenoiserSpec(layout=defaults.LAYOUT["tflite"])
OUTPUTS = ("compare.json", "compare.md", "samples.png")
PYTORCH_SDPA = "PyTorch fp32 on the CPU, fused SDPA"
UNBOUNDED = "fp32, unbounded attention"
ONNXRUNTIME = "onnxruntime: the fp32 ONNX file"  # the same bounded graph the TFLite files come from


@dataclass(frozen=True)
class Variant:
    name: str
    path: Path
    model: torch.nn.Module  # the network the file runs (for params and MACs)


def build_variants(unpruned: LoadedModel, pruned: LoadedModel | None, work: Path, calibration_size: int) -> list[Variant]:
    opts = BuildOptions(fp16=True, int8=("dynamic", "full"), calibration_size=calibration_size)
    files = build(unpruned.model, SPEC, work, opts, unpruned.sha256).files
    names = {TFLITE_FP32: "fp32", TFLITE_FP16: "fp16", TFLITE_INT8["dynamic"]: "int8 dynamic", TFLITE_INT8["full"]: "int8 full"}
    variants = [Variant(label, files[name], unpruned.model) for name, label in names.items()]
    variants.append(Variant(ONNXRUNTIME, files[ONNX_FILE], unpruned.model))
    (work / "unbounded").mkdir()
    unbounded = build(unpruned.model, SPEC, work / "unbounded", BuildOptions(fp16=False, tensor_mb=None), unpruned.sha256)
    variants.append(Variant(UNBOUNDED, unbounded.files[TFLITE_FP32], unpruned.model))
    if pruned is not None:
        (work / "pruned").mkdir()
        pruned_files = build(pruned.model, SPEC, work / "pruned", BuildOptions(fp16=False), pruned.sha256).files
        variants.append(Variant("structured-pruned fp32", pruned_files[TFLITE_FP32], pruned.model))
    for v in variants:
        if v.path.suffix == ".tflite":
            check_builtin_only(v.path)
    return variants


def step_call(backend, x: np.ndarray, t: np.ndarray, y: np.ndarray):
    """The raw fixed-batch call of a file, inputs prepared once (what an app pays per step)."""
    if isinstance(backend, ForeignTFLite):
        feeds = backend.feeds(x, t, y)
        return lambda: backend.run_feeds(feeds)
    x_file = SPEC.to_layout(x)
    return lambda: backend.raw_call(x_file, t, y)


def latency(backends: dict, reference: TorchBackend, rounds: int, repeats: int) -> dict[str, dict]:
    """One step of every file (its raw fixed-batch call) and of PyTorch with fused SDPA, all on the CPU."""
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    t, y = np.full((1,), 500.0, np.float32), np.zeros((1,), np.int32)
    calls = {name: step_call(backend, x, t, y) for name, backend in backends.items()}
    torch_step = reference.torch_denoise
    xt, tt, yt = (torch.from_numpy(a) for a in (x, t, y))
    calls[PYTORCH_SDPA] = lambda: torch_step(xt, tt, yt)
    for call in calls.values():
        time_calls(call, warmup=5, repeats=0)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            samples[name] += time_calls(call, warmup=1, repeats=repeats)
    return {name: summarize(s) | {"device": "cpu", "dtype": "float32"} for name, s in samples.items()}


IMAGE_CONFIG = SamplerConfig(sampler="ddim", steps=20, guidance=3.0, seed=0)  # what one phone image costs
IMAGE_ROUNDS = 3


def image_seconds(backends: dict, reference: TorchBackend, label: int, rounds: int = IMAGE_ROUNDS) -> dict[str, dict]:
    """Seconds for one guided DDIM-20 image, end to end (every denoiser call and the sampler), per
    variant; the variants take turns for `rounds` rounds; median and p90 (nearest-rank)."""
    schedule = linear_schedule()
    denoisers = {name: b.torch_denoise for name, b in backends.items()} | {PYTORCH_SDPA: reference.torch_denoise}
    samples: dict[str, list[float]] = {name: [] for name in denoisers}
    for _ in range(rounds):
        for name, denoise in denoisers.items():
            samples[name].append(record(denoise, [label], schedule, IMAGE_CONFIG).seconds * 1000)
    return {name: summarize(s) for name, s in samples.items()}


def compare(
    unpruned: LoadedModel,
    pruned: LoadedModel | None,
    out: Path,
    threads: int | None = None,
    labels: tuple[int, ...] = (3, 8),
    config: SamplerConfig = SamplerConfig(),
    calibration_size: int = 320,
    rounds: int = 5,
    repeats: int = 10,
    overwrite: bool = False,
    image_rounds: int = IMAGE_ROUNDS,
    foreign: tuple[Path, dict[str, str]] | None = None,
) -> dict:
    """Measure every variant; write out/compare.json, out/compare.md and out/samples.png."""
    inputs = [unpruned.path, pruned.path if pruned else None]
    for name in OUTPUTS:
        check_output_file(out / name, overwrite, inputs)
    threads = threads or default_threads()
    out.mkdir(parents=True, exist_ok=True)
    rows, images, timing, memory, image = measure(
        unpruned, pruned, threads, labels, config, calibration_size, rounds, repeats, image_rounds, foreign
    )
    names = [CIFAR10_LABELS[y] for y in labels]
    floor = compute_floor(unpruned.model, 1, threads)
    add_speed(rows, timing, memory, image, floor)
    m = machine()
    result = {
        "machine": m,
        "commit": m["commit"],
        "threads": threads,
        "batch": 1,
        "rounds": rounds,
        "repeats_per_round": repeats,
        "sources": {"unpruned": str(unpruned.source), "pruned": str(pruned.source) if pruned else None},
        "sampler": {
            "sampler": config.sampler,
            "steps": config.steps,
            "guidance": config.guidance,
            "seed": config.seed,
            "classes": names,
        },
        "variants": rows,
        "floor": floor,
        "pytorch_sdpa_latency": timing[PYTORCH_SDPA]
        | {"speedup_vs_fp32": round(timing["fp32"]["median_ms"] / timing[PYTORCH_SDPA]["median_ms"], 3)},
        "pytorch_sdpa_memory": memory[PYTORCH_SDPA],
        "pytorch_sdpa_image_ms": image[PYTORCH_SDPA],
        "image": {
            "sampler": IMAGE_CONFIG.sampler,
            "steps": IMAGE_CONFIG.steps,
            "guidance": IMAGE_CONFIG.guidance,
            "label": CIFAR10_LABELS[labels[0]],
            "rounds": image_rounds,
        },
    }
    save_image(torch.cat(images), out / "samples.png", cols=len(labels))
    write_json(out / "compare.json", result)
    atomic_write(out / "compare.md", lambda p: p.write_text(render(result)))
    return result


def measure(
    unpruned: LoadedModel,
    pruned: LoadedModel | None,
    threads: int,
    labels: tuple[int, ...],
    config: SamplerConfig,
    calibration_size: int,
    rounds: int,
    repeats: int,
    image_rounds: int,
    foreign,
) -> tuple:
    """Build the variants in a temporary folder and measure them: rows, images, timing, memory, image times."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="mobilegen-compare-") as tmp:
            variants = build_variants(unpruned, pruned, Path(tmp), calibration_size)
            if foreign is not None:
                variants.append(Variant(f"foreign: {foreign[0].name}", foreign[0], unpruned.model))
            schedule = linear_schedule()
            cases = forward_process_cases(schedule)
            reference = TorchBackend(unpruned.model, "cpu")
            ref_eps = reference(cases.x, cases.t, cases.y)
            ref_run = record(reference.torch_denoise, list(labels), schedule, config)
            rows, images = {}, [torch.from_numpy(ref_run.images)]
            backends = {
                v.name: ForeignTFLite(v.path, foreign[1], threads)
                if v.name.startswith("foreign")
                else open_artifact(v.path, SPEC, threads)
                for v in variants
            }
            for v in variants:
                rows[v.name], run = fidelity_row(v, backends[v.name], cases, ref_eps, ref_run, labels, config)
                images.append(torch.from_numpy(run.images))
            timing = latency(backends, reference, rounds, repeats)
            image = image_seconds(backends, reference, labels[0], image_rounds)
            memory = {v.name: measure_file(v.path, step_feeds(backends[v.name]), threads) for v in variants}
        memory[PYTORCH_SDPA] = measure_torch(str(unpruned.source) if unpruned.sha256 else None, 1, threads, "sdpa")
    finally:
        torch.set_num_threads(previous)
    return rows, images, timing, memory, image


def fidelity_row(v: Variant, backend, cases, ref_eps, ref_run, labels: tuple[int, ...], config: SamplerConfig):
    """A variant's size, network and fidelity (per-step eps PSNR, trajectory), and its sampling run."""
    eps = backend(cases.x, cases.t, cases.y)
    step_psnr = [min(psnr(ref_eps[i], eps[i]), PSNR_IDENTICAL) for i in range(len(cases))]
    run = record(backend.torch_denoise, list(labels), linear_schedule(), config)
    traj = compare_runs(v.name, ref_run, run, [CIFAR10_LABELS[y] for y in labels], (0.0, None))
    row = {
        "file": v.path.name,
        "bytes": v.path.stat().st_size,
        "params": count_params(v.model),
        "macs_per_step": count_macs(v.model),
        "step_psnr_db": {"min": round(min(step_psnr), 2), "mean": round(float(np.mean(step_psnr)), 2)},
        "trajectory": {
            "min_psnr_db": round(min(c["psnr"] for c in traj.per_class.values()), 2),
            "min_ssim": round(min(c["ssim"] for c in traj.per_class.values()), 4),
            "per_class": traj.per_class,
        },
    }
    return row, run


def add_speed(rows: dict[str, dict], timing: dict, memory: dict, image: dict, floor: dict) -> None:
    """Each row's latency with its speed-ups (vs fp32, the unbounded file, onnxruntime on our ONNX, a foreign
    file) and its time over the compute floor (the unpruned network's MACs at the SGEMM peak), memory and image time."""
    base, unbounded, ort = (timing[n]["median_ms"] for n in ("fp32", UNBOUNDED, ONNXRUNTIME))
    original = next((timing[n]["median_ms"] for n in rows if n.startswith("foreign")), None)
    for name, row in rows.items():
        ms = timing[name]["median_ms"]
        row["latency"] = timing[name] | {
            "speedup_vs_fp32": round(base / ms, 3),
            "speedup_vs_unbounded": round(unbounded / ms, 3),
            "speedup_vs_onnxruntime": round(ort / ms, 3),
            "vs_floor": round(ms / floor["floor_ms"], 2),
        }
        if original:
            row["latency"]["speedup_vs_foreign"] = round(original / ms, 3)
        row["memory"] = memory[name]
        row["image_ms"] = image[name]


def step_feeds(backend) -> dict[str, np.ndarray]:
    if isinstance(backend, ForeignTFLite):
        x = np.random.default_rng(0).standard_normal((backend.batch, 3, 64, 64)).astype(np.float32)
        return backend.feeds(x, np.full((backend.batch,), 500.0, np.float32), np.zeros((backend.batch,), np.int32))
    return contract_feeds(SPEC)


def render(result: dict) -> str:
    m, s = result["machine"], result["sampler"]
    lines = [
        f"# Variants side by side ({result['threads']} threads, batch 1)",
        "",
        f"Machine: {machine_line(m)}.",
        "",
        f"Reference: the unpruned PyTorch fp32 model ({result['sources']['unpruned']}). Trajectory: {s['sampler']} "
        f"{s['steps']} steps, guidance {s['guidance']:g}, seed {s['seed']}, classes {', '.join(s['classes'])}.",
        "",
        "| variant | file MB | params | GMACs/step | median ms | p90 ms | speedup vs fp32 | vs unbounded | vs onnxruntime "
        "| vs foreign | x floor | one image s | peak RSS MB | largest tensor MB | alive at once MB | step PSNR min/mean dB "
        "| trajectory PSNR min dB | trajectory SSIM min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["variants"].items():
        lat, step, traj, mem = r["latency"], r["step_psnr_db"], r["trajectory"], r["memory"]
        g = mem.get("graph", {})
        vs_foreign = f"{lat['speedup_vs_foreign']:.2f}x" if "speedup_vs_foreign" in lat else "-"
        lines.append(
            f"| {name} | {r['bytes'] / 1e6:.2f} | {r['params']:,} | {r['macs_per_step'] / 1e9:.2f} | {lat['median_ms']:.1f} "
            f"| {lat['p90_ms']:.1f} | {lat['speedup_vs_fp32']:.2f}x | {lat['speedup_vs_unbounded']:.2f}x "
            f"| {lat['speedup_vs_onnxruntime']:.2f}x | {vs_foreign} | {lat['vs_floor']:.2f}x "
            f"| {r['image_ms']['median_ms'] / 1000:.2f} | {mem['peak_rss_mb']:.1f} | {g.get('largest_tensor_mb', float('nan')):.2f} | {g.get('peak_live_mb', float('nan')):.1f} "
            f"| {step['min']:.1f} / {step['mean']:.1f} "
            f"| {traj['min_psnr_db']:.1f} | {traj['min_ssim']:.3f} |"
        )
    sdpa, floor, isa = result["pytorch_sdpa_latency"], result["floor"], m.get("cpu_class", {})
    lines += [
        "",
        f"x floor: the median over the compute floor, {floor['gmacs']:.2f} GMAC per step at this run's SGEMM peak "
        f"{floor['sgemm_gflops']:.1f} GFLOP/s (torch.mm 2048^3, same threads) = {floor['floor_ms']:.1f} ms; CPU family "
        f"{isa.get('family', '?')} model {isa.get('model', '?')}, widest vector ISA {isa.get('vector_isa', '?')}.",
        "",
        f"The bar: {PYTORCH_SDPA} (unpruned), timed in the same rounds: median {sdpa['median_ms']:.1f} ms, "
        f"p90 {sdpa['p90_ms']:.1f} ms ({sdpa['speedup_vs_fp32']:.2f}x the fp32 file's speed).",
    ]
    im = result["image"]
    lines += [
        "",
        f"One image: a guided ({im['guidance']:g}) {im['sampler']} {im['steps']}-step {im['label']}, end to end "
        f"(every call and the sampler), median of {im['rounds']} rounds taken in turns; {PYTORCH_SDPA}: "
        f"{result['pytorch_sdpa_image_ms']['median_ms'] / 1000:.2f} s.",
    ]
    pm = result["pytorch_sdpa_memory"]
    lines += [
        "",
        f"Memory: {pm['method']}. {PYTORCH_SDPA}: peak RSS {pm['peak_rss_mb']:.1f} MB over a process with torch imported.",
    ]
    rows = ", ".join(["PyTorch fp32 (reference)", *result["variants"]])
    lines += ["", "![final images](samples.png)", "", f"samples.png rows, top to bottom: {rows}."]
    return "\n".join(lines) + "\n"
