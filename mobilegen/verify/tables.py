"""The performance tables of the docs, made from the files that measured them
(`mobilegen-export perf-tables`).

Inputs: a compare.json of `mobilegen-export compare` (the variants side by side and
their memory) and any number of bench files (an export's manifest.json after
`mobilegen-export bench`, whose `latency` section is read, or that section saved alone).
Every table is stamped with the commit and the machine its file records; a field the
file lacks is printed as "not recorded", never guessed.

Markdown files hold this output between `<!-- perf_tables: ARGS -->` and
`<!-- /perf_tables -->`, ARGS being the command's arguments; `update` rewrites every
such block, and tests/test_docs.py fails while a block differs from its file.
Standard library only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from mobilegen.errors import InvalidInput

NOT_RECORDED = "not recorded"
TABLES = ("variants", "memory", "latency")
# The two PyTorch rows of `mobilegen-export bench` (mobilegen/verify/bench.py).
ORIGINAL = "pytorch fp32 (original attention)"
FUSED = "pytorch fp32 (fused sdpa)"


def load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"{path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def recorded(value) -> str:
    """A recorded field as text: lists joined, mappings as key=value, absent as NOT_RECORDED."""
    if value is None or value == "" or value == [] or value == {}:
        return NOT_RECORDED
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def stamp(data: dict) -> str:
    machine = data.get("machine") or {}
    cores = machine.get("cores")
    return (
        f"commit: {recorded(data.get('commit'))}; machine: {recorded(machine.get('cpu'))}, "
        f"{f'{cores} cores' if cores else 'cores ' + NOT_RECORDED}, CPU flags: {recorded(machine.get('flags'))}"
    )


def table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    """align: one letter per column, l or r."""
    rule = ["---" if a == "l" else "---:" for a in align]
    return ["| " + " | ".join(cells) + " |" for cells in [header, rule, *rows]]


def number(value, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def dig(obj: dict, *keys):
    for key in keys:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def compare_context(data: dict) -> str:
    s, src = data.get("sampler") or {}, data.get("sources") or {}
    classes = ",".join(s.get("classes") or []) or NOT_RECORDED
    guidance = s.get("guidance")
    return (
        f"threads {recorded(data.get('threads'))}, batch {recorded(data.get('batch'))}, "
        f"{recorded(data.get('rounds'))} rounds x {recorded(data.get('repeats_per_round'))} calls per file; "
        f"trajectory {recorded(s.get('sampler'))} {recorded(s.get('steps'))} steps, "
        f"guidance {NOT_RECORDED if guidance is None else f'{guidance:g}'}, seed {recorded(s.get('seed'))}, "
        f"classes {classes}; reference {recorded(src.get('unpruned'))}, pruned {recorded(src.get('pruned'))}"
    )


VARIANT_HEADER = [
    "variant",
    "file MB",
    "params",
    "GMACs/step",
    "median ms",
    "p90 ms",
    "vs fp32",
    "vs onnxruntime",
    "vs foreign",
    "x floor",
    "one image s",
    "peak RSS MB",
    "step PSNR min / mean dB",
    "trajectory PSNR min dB",
    "SSIM min",
]


def variants_table(data: dict) -> list[str]:
    variants = data.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise InvalidInput("the compare file has no 'variants' (is it a compare.json of mobilegen-export compare?)")
    has_foreign = any(name.startswith("foreign") for name in variants)
    rows = []
    for name, v in variants.items():
        lat, step = v.get("latency") or {}, v.get("step_psnr_db") or {}
        macs = v.get("macs_per_step")
        rows.append(
            [
                name,
                number(v.get("bytes") and v["bytes"] / 1e6, ".2f"),
                number(v.get("params"), ","),
                number(macs and macs / 1e9, ".2f"),
                number(lat.get("median_ms"), ".1f"),
                number(lat.get("p90_ms"), ".1f"),
                number(lat.get("speedup_vs_fp32"), ".2f", "x"),
                number(lat.get("speedup_vs_onnxruntime"), ".2f", "x"),
                number(lat.get("speedup_vs_foreign"), ".2f", "x") if has_foreign else "-",
                number(lat.get("vs_floor"), ".2f", "x"),
                number(dig(v, "image_ms", "median_ms") and v["image_ms"]["median_ms"] / 1000, ".2f"),
                number(dig(v, "memory", "peak_rss_mb"), ".1f"),
                f"{number(step.get('min'), '.1f')} / {number(step.get('mean'), '.1f')}",
                number(dig(v, "trajectory", "min_psnr_db"), ".1f"),
                number(dig(v, "trajectory", "min_ssim"), ".3f"),
            ]
        )
    lines = [f"Variants side by side ({stamp(data)}; {compare_context(data)}):", ""]
    lines += table(VARIANT_HEADER, "l" + "r" * (len(VARIANT_HEADER) - 1), rows)
    bar, bar_mem = data.get("pytorch_sdpa_latency"), data.get("pytorch_sdpa_memory")
    if bar:
        text = (
            f"PyTorch fp32 with fused SDPA, timed in the same rounds: median {number(bar.get('median_ms'), '.1f')} ms, "
            f"p90 {number(bar.get('p90_ms'), '.1f')} ms"
        )
        if bar_mem:
            text += f"; peak RSS {number(bar_mem.get('peak_rss_mb'), '.1f')} MB (torch imported before the counter reset)"
        lines += ["", text + "."]
    floor = data.get("floor")
    if floor:
        lines += [
            "",
            f"x floor: the median over the compute floor, {number(floor.get('gmacs'), '.2f')} GMAC per step at the SGEMM "
            f"peak measured in the same run ({number(floor.get('sgemm_gflops'), '.1f')} GFLOP/s) = "
            f"{number(floor.get('floor_ms'), '.1f')} ms.",
        ]
    image = data.get("image")
    if image:
        lines += [
            "",
            f"One image: a guided ({image.get('guidance')}) {image.get('sampler')} {image.get('steps')}-step "
            f"{image.get('label')}, end to end (every denoiser call and the sampler), median of {image.get('rounds')} "
            f"rounds taken in turns; PyTorch fp32 with fused SDPA: "
            f"{number(dig(data, 'pytorch_sdpa_image_ms', 'median_ms') and data['pytorch_sdpa_image_ms']['median_ms'] / 1000, '.2f')} s.",
        ]
    return lines


def memory_table(data: dict) -> list[str]:
    rows = []
    for name, v in (data.get("variants") or {}).items():
        m = v.get("memory") or {}
        g = m.get("graph") or {}
        rows.append(
            [
                name,
                number(m.get("peak_rss_mb"), ".1f"),
                number(m.get("after_load_mb"), ".1f"),
                number(g.get("largest_tensor_mb"), ".2f"),
                number(g.get("peak_live_mb"), ".1f"),
                number(g.get("operators"), "d"),
            ]
        )
    method = next(
        (
            v["memory"]["method"]
            for v in (data.get("variants") or {}).values()
            if isinstance(v.get("memory"), dict) and v["memory"].get("method")
        ),
        NOT_RECORDED,
    )
    header = ["variant", "peak RSS MB", "after load MB", "largest tensor MB", "alive at once MB", "operators"]
    lines = [
        f"Memory of each file ({stamp(data)}; threads {recorded(data.get('threads'))}, batch {recorded(data.get('batch'))}):",
        "",
    ]
    lines += table(header, "lrrrrr", rows)
    return lines + ["", f"Method: {method}."]


def bench_section(path: Path) -> dict:
    data = load_json(path)
    section = data.get("latency", data)
    if not isinstance(section, dict) or "timings" not in section:
        raise InvalidInput(f"{path}: no latency timings (run `mobilegen-export bench DIR` first, then pass DIR/manifest.json)")
    return section  # its own commit only: the export's may be older than the bench run


def latency_table(section: dict) -> list[str]:
    ratios, memory = section.get("ratios") or {}, section.get("memory") or {}
    medians = {tm.get("name"): tm.get("median_ms") for tm in section["timings"]}

    def speedup(name: str, key: str, reference: str):
        # bench records ratios for the files only; the PyTorch rows get the same quotient of medians
        if key in (ratios.get(name) or {}):
            return ratios[name][key]
        ref, own = medians.get(reference), medians.get(name)
        return round(ref / own, 3) if ref and own else None

    rows = []
    for tm in section["timings"]:
        name = tm.get("name", "?")
        rows.append(
            [
                name,
                number(tm.get("median_ms"), ".2f"),
                number(tm.get("p90_ms"), ".2f"),
                number(tm.get("load_ms"), ".1f"),
                number(speedup(name, "speedup_vs_original_attention", ORIGINAL), ".2f", "x"),
                number(speedup(name, "speedup_vs_fused_sdpa", FUSED), ".2f", "x"),
                number(dig(memory, name, "peak_rss_mb"), ".1f"),
            ]
        )
    header = ["backend", "median ms", "p90 ms", "load ms", "vs original attention", "vs fused SDPA", "peak RSS MB"]
    context = (
        f"threads {recorded(section.get('threads'))}, batch {recorded(section.get('batch'))}, "
        f"warm-up {recorded(section.get('warmup'))}, {recorded(section.get('repeats'))} timed calls"
    )
    lines = [f"Latency per backend ({stamp(section)}; {context}):", "", *table(header, "lrrrrrr", rows)]
    untimed = [
        f"{name} {number(m.get('peak_rss_mb'), '.1f')} MB"
        for name, m in memory.items()
        if name not in medians and isinstance(m, dict)
    ]
    if untimed:
        lines += ["", "Peak RSS, measured without a timing row: " + "; ".join(untimed) + "."]
    return lines


def render(compare: Path | None, benches: list[Path], only: list[str]) -> str:
    blocks: list[list[str]] = []
    if compare is not None:
        data = load_json(compare)
        if "variants" in only:
            blocks.append(variants_table(data))
        if "memory" in only:
            blocks.append(memory_table(data))
    if "latency" in only:
        blocks += [latency_table(bench_section(p)) for p in benches]
    if not blocks:
        raise InvalidInput("nothing to print: give COMPARE_JSON for variants/memory, --bench for latency")
    return "\n\n".join("\n".join(b) for b in blocks) + "\n"


# A block: the start marker alone on its line, ARGS on that line, then anything up to the end marker.
BLOCK = re.compile(r"^(<!-- perf_tables: ([^\n]*?) -->\n)(.*?)^(<!-- /perf_tables -->)$", re.S | re.M)


def blocks(markdown: str) -> list[tuple[str, str]]:
    """(ARGS, text between the markers) of every generated block of a markdown file."""
    return [(m.group(2), m.group(3)) for m in BLOCK.finditer(markdown)]


def block_text(tables: str) -> str:
    """What a block holds: a blank line, the tables, a blank line."""
    return "\n" + tables + "\n"


def update(paths: list[Path], tables_for: Callable[[str], str]) -> list[Path]:
    """Rewrite every block of each file with tables_for(ARGS); returns the files that changed."""
    changed = []
    for path in paths:
        try:
            old = path.read_text()
        except OSError as exc:
            raise InvalidInput(f"{path}: {exc.strerror or exc}") from exc
        if not blocks(old):
            raise InvalidInput(f"{path}: no <!-- perf_tables: ARGS --> block to update")
        new = BLOCK.sub(lambda m: m.group(1) + block_text(tables_for(m.group(2))) + m.group(4), old)
        if new != old:
            path.write_text(new)
            changed.append(path)
    return changed
