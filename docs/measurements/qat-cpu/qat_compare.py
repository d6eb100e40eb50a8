"""Does fp16 QAT help? Train the same student twice (same seed, data, steps), with and
without QAT, export both to fp16 TFLite, and compare how far each fp16 file deviates
from its own fp32 model (per-step PSNR over the 77-case parity set).

    .venv/bin/python docs/measurements/qat-cpu/qat_compare.py --steps 30 --qat-every 10

Prints a table; the numbers in docs/training.md come from this command.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mobilegen.models.checkpoint import load_checkpoint
from mobilegen.jobs.export import ExportOptions, export_artifacts
from mobilegen.train import TrainConfig, train, write_demo_folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="student_v2")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--qat-every", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mobilegen-qat-") as tmp:
        data = write_demo_folder(Path(tmp) / "data", per_class=args.per_class, seed=args.seed)
        for label, k in (("no QAT", 0), (f"QAT every {args.qat_every}", args.qat_every)):
            run = Path(tmp) / f"run{k}"
            result = train(TrainConfig(data=data, out=run, arch=args.arch, epochs=1000, batch_size=args.batch_size,
                                       max_steps=args.steps, qat_every=k, seed=args.seed, device="cpu", ema_start=0,
                                       checkpoint_every=0))  # fmt: skip
            export = export_artifacts(load_checkpoint(run / "ema.pt"), ExportOptions(out_dir=run / "export", bench=False))
            fp16 = export.manifest["parity"]["denoiser_float16.tflite"]
            per_case = [c.psnr for c in export.parity["denoiser_float16.tflite"].cases]
            finite = [p for p in per_case if p != float("inf")]
            mean = sum(finite) / len(finite) if finite else float("inf")
            rows.append((label, fp16["min_psnr_db"], mean, fp16["max_abs_error"], list(result.val_losses.values())[-1]))
    print(f"{args.arch}, {args.steps} steps, batch {args.batch_size}, seed {args.seed} (demo data, CPU)")
    print(f"{'run':<16} {'fp16 vs own fp32: min PSNR dB':>30} {'mean PSNR dB':>13} {'max abs':>10} {'val eps-MSE':>12}")
    for label, lo, mean, mx, val in rows:
        print(f"{label:<16} {lo:>30.1f} {mean:>13.1f} {mx:>10.2e} {val:>12.4f}")


if __name__ == "__main__":
    main()
