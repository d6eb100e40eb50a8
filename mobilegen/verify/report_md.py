"""report.md: a short human summary of what the manifest says."""

from __future__ import annotations

from pathlib import Path

from mobilegen.contract.defaults import REPORT_MD
from mobilegen.files import atomic_write

UNSTRUCTURED_NOTE = (
    "Unstructured pruning sets weights to zero but keeps every tensor dense: the kernels do "
    "the same work, so it shrinks the gzip'd download only and makes nothing faster."
)


def number(value: float | None) -> str:
    """An error figure; None is what the manifest holds for a non-finite one."""
    return "NaN/Inf" if value is None else f"{value:.2e}"


def render(manifest: dict) -> str:
    m = manifest
    lines = [
        f"# MobileGen export: {m['model']['arch']} - status: **{m['status'].upper()}**",
        "",
        f"Source: `{m['source']['checkpoint']}` (sha256 `{m['source']['sha256']}`, weights from {m['source']['weights']})",
        "",
        f"IO contract: x float32 {m['io']['inputs'][0]['shape']} {m['io']['layout']}, t float32 [{m['io']['batch']}], "
        f"y int32 [{m['io']['batch']}] (-1 = unconditional) -> eps float32, signature `serving_default`.",
        "",
        "## Files",
        "",
        "| file | bytes | gzip bytes | sha256 |",
        "|---|---:|---:|---|",
    ]
    for name, f in m["files"].items():
        lines.append(f"| {name} | {f['bytes']:,} | {f['gzip_bytes']:,} | `{f['sha256'][:16]}...` |")
    lines += [
        "",
        "## Parity against the PyTorch fp32 reference (float32 files: against float64)",
        "",
        "| artifact | result | min PSNR dB | gate dB | max abs error | max abs vs float64: file / pytorch fp32 | worst case |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    lines += parity_rows(m)
    lines += compression_section(m)
    lines += memory_section(m)
    lines += targets_section(m)
    if "latency" in m:
        lat = m["latency"]
        lines += [
            "",
            f"## Latency per step (batch {lat['batch']}, {lat['threads']} threads, {lat['machine']['cpu']})",
            "",
            "```",
            lat["table"],
            "```",
        ]
    return "\n".join(lines) + "\n"


def parity_rows(m: dict) -> list[str]:
    lines = []
    for name, p in m["parity"].items():
        f64 = p.get("float64")
        truth = f"{number(f64['artifact_max_abs_error'])} / {number(f64['reference_max_abs_error'])}" if f64 else "-"
        psnr = "NaN/Inf" if p["min_psnr_db"] is None else f"{p['min_psnr_db']:.1f}"
        lines.append(
            f"| {name} | {'pass' if p['passed'] else 'FAIL'} | {psnr} | {p['gate']['min_psnr']:g} "
            f"| {number(p['max_abs_error'])} | {truth} | {p['worst_case']} |"
        )
    if any("float64" in p for p in m["parity"].values()):
        multiple = next(p["float64"]["multiple"] for p in m["parity"].values() if "float64" in p)
        lines += [
            "",
            f"A float32 file passes when its error against a float64 run of the same model is within the gate, "
            f"or at most {multiple:g}x the PyTorch fp32 reference's own error against float64.",
        ]
    return lines


def compression_section(m: dict) -> list[str]:
    lines = []
    prune = m["compression"]["prune"]
    lines += ["", "## Compression", ""]
    if prune["amount"]:
        lines += [
            f"L1 unstructured pruning, amount {prune['amount']}: global sparsity {prune['global']:.1%} over "
            f"{prune['parameters_pruned']:,} conv/linear/attention weights. Pruned vs unpruned model, per-step PSNR: "
            f"min {prune['pruned_vs_unpruned_psnr_db']['min']} dB, mean {prune['pruned_vs_unpruned_psnr_db']['mean']} dB.",
            "",
            "| weights stored as | gzip bytes pruned | gzip bytes unpruned |",
            "|---|---:|---:|",
        ]
        for dtype, size in prune["weights_gzip_bytes"].items():
            lines.append(f"| {dtype} | {size['pruned']:,} | {size['unpruned']:,} |")
        lines += ["", UNSTRUCTURED_NOTE]
    else:
        lines.append("No pruning.")
    for mode, q in m["compression"].get("int8", {}).items():
        lines += [
            "",
            f"int8 {mode} ({q['tool']}): weights {q['weights']}; activations {q['activations']}"
            + (f", {q['calibration_samples']} calibration inputs" if "calibration_samples" in q else "")
            + ". These weight ops stay float32:",
            "",
        ]
        lines += [f"- `{k['op']}` ({k['role']}): {k['why']}" for k in q["kept_float"]] or ["- none"]
    return lines


def memory_section(m: dict) -> list[str]:
    measured = {name: f["memory"] for name, f in m["files"].items() if "memory" in f}
    if not measured:
        return []
    first = next(iter(measured.values()))
    lines = [
        "",
        "## Memory of one step",
        "",
        f"Method: {first['method']} ({first['threads']} threads). Largest tensor and "
        "peak bytes alive at once (in operator order) read from the file.",
        "",
        "| file | result | peak RSS MB | limit MB | after load MB | largest tensor | tensor MB | alive at once MB |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for name, r in measured.items():
        g = r.get("graph")
        graph = (
            f"`{g['largest_tensor']}` {g['largest_tensor_shape']} | {g['largest_tensor_mb']:.2f} | {g['peak_live_mb']:.1f}"
            if g
            else "- | - | -"
        )
        lines.append(
            f"| {name} | {'pass' if r['passed'] else 'FAIL'} | {r['peak_rss_mb']:.1f} | {'-' if r['limit_mb'] is None else format(r['limit_mb'], 'g')} "
            f"| {r['after_load_mb']:.1f} | {graph} |"
        )
    return lines


def targets_section(m: dict) -> list[str]:
    """The phone paths (`--targets`): per file and path, what one step and the float16 image measured."""
    if "targets" not in m:
        return []
    t, traj = m["targets"], m["targets"]["trajectory"]
    lines = [
        "",
        "## On the phone's paths",
        "",
        f"Runtimes: {'; '.join(f'{k}: {v}' for k, v in t['runtimes'].items())} (they stand in for a phone's "
        "numerics and op coverage; their times say nothing about a phone). One step on "
        f"{len(t['cases'])} cases ({'; '.join(t['cases'])}) against float64; float16 paths also draw a guided "
        f"{traj['sampler'].upper()}-{traj['steps']} image (guidance {traj['guidance']:g}, seed {traj['seed']}, "
        f"{', '.join(traj['classes'])}) compared with PyTorch fp32"
        + (f"; the images side by side: {t['images']['file']} ({', '.join(t['images']['columns'])})." if "images" in t else "."),
        "",
        "| file | path | result | step min PSNR dB | gate dB | image PSNR dB / SSIM | ops on the accelerator |",
        "|---|---|---|---:|---:|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in target_rows(t)]
    return lines


def target_rows(targets: dict) -> list[tuple[str, ...]]:
    """Per file and path: file, path, result, step min PSNR, gate, image PSNR / SSIM, ops on the accelerator."""
    rows = []
    for name, paths in targets["results"].items():
        for path, r in paths.items():
            step, image, cov = r["step"], r.get("trajectory"), r.get("coverage") or {}
            psnr = "NaN/Inf" if step["min_psnr_db"] is None else f"{step['min_psnr_db']:.1f}"
            shown = (
                "-"
                if not image
                else "lost"
                if image["min_psnr_db"] is None
                else f"{image['min_psnr_db']:.1f} / {image['min_ssim']:.4f}"
            )
            ops = (
                f"{cov['gpu_ops']}/{cov['ops']} GPU"
                if "gpu_ops" in cov
                else f"{cov['delegated']}/{cov['ops']} XNNPACK"
                if cov
                else "-"
            )
            rows.append((name, path, "pass" if r["passed"] else "FAIL", psnr, f"{step['gate_min_psnr_db']:g}", shown, ops))
    return rows


def write_report(directory: Path, manifest: dict) -> Path:
    text = render(manifest)
    return atomic_write(directory / REPORT_MD, lambda tmp: tmp.write_text(text))
