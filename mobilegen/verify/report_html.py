"""report.html: one self-contained page (inline PNGs, no scripts, no network) for a person.

Sample grids from every backend for the same seeds side by side, per-step error
curves of the sampling trajectory, images per second, latency and size bars, and
per-layer sparsity.
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
import torch

from mobilegen.contract import manifest as mf
from mobilegen.diffusion import SamplerConfig
from mobilegen.diffusion.schedule import schedule_from_alphas_cumprod
from mobilegen.runtime.images import png_bytes
from mobilegen.verify.folder import REFERENCE, Trajectories
from mobilegen.verify.report_md import target_rows

SPEED_STEPS = (10, 20, 50)


def _png(data: bytes) -> str:
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _figure(draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return _png(buf.getvalue())


def _grid_row(images: np.ndarray) -> str:
    big = torch.from_numpy(images).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    return _png(png_bytes(big))


def images_per_second(manifest: dict, label: int, traj: Trajectories) -> dict:
    """Whole-image throughput of DDIM at 10, 20, 50 steps (guided), per backend, on the
    backends the trajectory run already opened."""
    from mobilegen.verify.trajectory import record

    schedule = schedule_from_alphas_cumprod(manifest["schedule"]["alphas_cumprod"])
    out: dict[str, dict[int, float]] = {}
    for name, denoise in traj.denoisers.items():
        out[name] = {}
        for steps in SPEED_STEPS:
            if steps == traj.config.steps and traj.config.sampler == "ddim":
                out[name][steps] = round(len(traj.labels) / traj.runs[name].seconds, 3)
                continue
            cfg = SamplerConfig(steps=steps, guidance=traj.config.guidance, seed=traj.config.seed)
            out[name][steps] = round(1 / record(denoise, [label], schedule, cfg).seconds, 3)
    return out


def render(manifest: dict, traj: Trajectories, ips: dict, targets_png: bytes | None = None) -> str:
    parts = page_head(manifest) + trajectory_sections(traj) + targets_section(manifest, targets_png) + speed_section(ips)
    parts += latency_section(manifest) + memory_section(manifest) + size_sections(manifest)
    parts.append("</body></html>")
    return "\n".join(parts)


def page_head(m: dict) -> list[str]:
    """The title, the style and the source."""
    esc, parts = html.escape, []
    parts += [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>MobileGen report: {esc(m['model']['arch'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}.fail{color:#b00;font-weight:bold}.pass{color:#070}"
        "img{image-rendering:pixelated;vertical-align:middle}</style></head><body>",
        f"<h1>MobileGen export: {esc(m['model']['arch'])} "
        f"<span class='{'pass' if m['status'] == 'passed' else 'fail'}'>{esc(m['status'].upper())}</span></h1>",
        f"<p>Source: <code>{esc(str(m['source']['checkpoint']))}</code></p>",
    ]
    return parts


def trajectory_sections(traj: Trajectories) -> list[str]:
    """The sample grids, the trajectory table and the per-step error curves."""
    esc, parts = html.escape, []
    cfg = traj.config
    steps = len(traj.runs[REFERENCE].timesteps)
    parts.append(
        f"<h2>Samples: same seed ({cfg.seed}) and noise on every backend</h2><p>{esc(cfg.sampler.upper())} "
        f"{steps} steps, guidance {cfg.guidance:g}; classes: {esc(', '.join(traj.label_names))}.</p><table>"
    )
    for name, run in traj.runs.items():
        parts.append(f"<tr><td>{esc(name)}</td><td>{_grid_row(run.images)}</td></tr>")
    parts.append(
        "</table><h2>Trajectory parity against PyTorch fp32</h2><table><tr><th>artifact</th><th>class</th>"
        "<th>final PSNR dB</th><th>SSIM</th><th>gate</th><th>result</th></tr>"
    )
    for name, r in traj.results.items():
        gate = f"&ge; {r.gate[0]:g} dB" + (f", SSIM &ge; {r.gate[1]:g}" if r.gate[1] else "")
        for label, c in r.per_class.items():
            ok = not any(f.startswith(label + ":") for f in r.failures)
            parts.append(
                f"<tr><td>{esc(name)}</td><td>{esc(label)}</td><td>{c['psnr']:.1f}</td><td>{c['ssim']:.4f}</td>"
                f"<td>{gate}</td><td class='{'pass' if ok else 'fail'}'>{'pass' if ok else 'FAIL'}</td></tr>"
            )
    parts.append("</table>")

    def error_curves(ax):
        for name, r in traj.results.items():
            ax.plot(
                range(1, len(r.per_step) + 1),
                [math.nan if s["psnr"] is None else min(s["psnr"], 200) for s in r.per_step],
                label=name,
            )
        ax.set_xlabel("sampling step (t decreasing)")
        ax.set_ylabel("PSNR of x_t vs PyTorch (dB)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)

    parts.append("<h2>Per-step error of the state x_t</h2>" + _figure(error_curves))
    return parts


def targets_section(m: dict, png: bytes | None) -> list[str]:
    """The phone paths (`--targets`): their images beside PyTorch's and x86's, and their figures."""
    if "targets" not in m:
        return []
    esc, t = html.escape, m["targets"]
    tr = t["trajectory"]
    parts = [
        "<h2>On the phone's paths</h2><p>"
        + esc("; ".join(f"{k}: {v}" for k, v in t["runtimes"].items()))
        + ". They stand in for a phone's numerics and op coverage; their times say nothing about a phone.</p>"
    ]
    if png is not None and "images" in t:
        parts.append(
            f"<p>Guided {esc(tr['sampler'].upper())}-{tr['steps']}, guidance {tr['guidance']:g}, seed {tr['seed']}, "
            f"{esc(', '.join(tr['classes']))}; columns: {esc(', '.join(t['images']['columns']))}.</p>"
            + _png(png).replace("<img", "<img width='" + str(96 * len(t["images"]["columns"])) + "'", 1)
        )
    parts.append(
        "<table><tr><th>file</th><th>path</th><th>result</th><th>step min PSNR dB</th><th>gate dB</th>"
        "<th>image PSNR dB / SSIM</th><th>ops on the accelerator</th></tr>"
    )
    for row in target_rows(t):
        result = f"<td class='{row[2].lower()}'>{row[2]}</td>"  # pass / FAIL
        parts.append("<tr>" + "".join(result if i == 2 else f"<td>{esc(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    parts.append("</table>")
    return parts


def speed_section(ips: dict) -> list[str]:
    """Whole images per second per backend."""
    esc, parts = html.escape, []
    parts.append(
        "<h2>Whole images per second (DDIM, guided)</h2><table><tr><th>backend</th>"
        + "".join(f"<th>{s} steps</th>" for s in SPEED_STEPS)
        + "</tr>"
    )
    for name, row in ips.items():
        parts.append(f"<tr><td>{esc(name)}</td>" + "".join(f"<td>{row[s]:.2f}</td>" for s in SPEED_STEPS) + "</tr>")
    parts.append("</table>")
    return parts


def latency_section(m: dict) -> list[str]:
    """The latency bars, when the manifest (or bench.json) has them."""
    parts = []
    if "latency" in m:
        lat = m["latency"]

        def latency(ax):
            names = [t["name"] for t in lat["timings"]]
            ax.barh(
                names,
                [t["median_ms"] for t in lat["timings"]],
                xerr=[[0] * len(names), [t["p90_ms"] - t["median_ms"] for t in lat["timings"]]],
                color="#4878a8",
            )
            ax.set_xlabel(f"ms per step (median, bar to p90), {lat['threads']} threads, {lat['machine']['cpu']}")
            ax.invert_yaxis()

        parts.append("<h2>Latency per denoising step</h2>" + _figure(latency))
    return parts


def memory_section(m: dict) -> list[str]:
    """Each file's memory of one step."""
    esc, parts = html.escape, []
    measured = {n: f["memory"] for n, f in m["files"].items() if "memory" in f}
    if measured:
        parts.append(
            "<h2>Memory of one step</h2><p>" + esc(next(iter(measured.values()))["method"]) + "</p><table><tr>"
            "<th>file</th><th>peak RSS MB</th><th>limit MB</th><th>largest tensor</th><th>tensor MB</th>"
            "<th>alive at once MB</th></tr>"
        )
        for name, r in measured.items():
            g = r.get("graph") or {"largest_tensor": "-", "largest_tensor_mb": float("nan"), "peak_live_mb": float("nan")}
            parts.append(
                f"<tr><td>{esc(name)}</td><td>{r['peak_rss_mb']:.1f}</td><td>{'-' if r['limit_mb'] is None else format(r['limit_mb'], 'g')}</td>"
                f"<td>{esc(g['largest_tensor'])}</td><td>{g['largest_tensor_mb']:.2f}</td><td>{g['peak_live_mb']:.1f}</td></tr>"
            )
        parts.append("</table>")
    return parts


def size_sections(m: dict) -> list[str]:
    """File sizes, and per-layer sparsity of a pruned export."""
    parts = []
    files = {n: f for n, f in m["files"].items() if n != mf.LABELS}

    def sizes(ax):
        names = list(files)
        ax.barh(names, [f["bytes"] / 1e6 for f in files.values()], label="file", color="#4878a8")
        ax.barh(names, [f["gzip_bytes"] / 1e6 for f in files.values()], label="gzip", color="#e0a040")
        ax.set_xlabel("MB")
        ax.legend()
        ax.invert_yaxis()

    parts.append("<h2>Sizes</h2>" + _figure(sizes))
    prune = m["compression"]["prune"]
    if prune["amount"]:

        def sparsity(ax):
            layers = prune["layers"]
            ax.bar(range(len(layers)), list(layers.values()), color="#6a9a58")
            ax.set_xlabel(f"layer (conv/linear/attention weights, {len(layers)} tensors)")
            ax.set_ylabel("sparsity")
            ax.set_ylim(0, 1)

        parts.append(
            f"<h2>Per-layer sparsity (global {prune['global']:.1%})</h2>"
            + _figure(sparsity)
            + "<p>Unstructured zeros shrink the gzip'd download only; dense kernels do the same work.</p>"
        )
    return parts
