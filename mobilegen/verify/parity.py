"""One parity check for every backend: collect every case, report, gate.

float16 and int8 artifacts are measured against the PyTorch float32 reference on the
same inputs: a case fails on NaN/Inf, on PSNR below the gate, or on max abs error
above max_abs_rel * max|ref|.

The float32 artifacts (ONNX, float32 TFLite) are as precise as that reference, so
judging them against it measures the reference's own rounding error too (on badly
conditioned weights it is the larger part). They are measured against a float64 run
of the same model instead, and so is the reference. A case passes when the artifact's
error against float64 is within the absolute gate, or no worse than
``float64_multiple`` times the reference's worst error over the parity set, whichever
is looser (for max abs error and for PSNR alike), but never below ``float64_min_psnr``
(the fp16 gate: a float32 file may not be worse than a float16 one). Nothing is
downgraded to a warning.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mobilegen.contract.gates import GateResult
from mobilegen.contract.spec import PRECISION, DenoiserSpec, Tolerance
from mobilegen.diffusion.cases import Cases
from mobilegen.runtime.backends import TorchBackend, open_artifact

log = logging.getLogger(__name__)

PSNR_IDENTICAL = 999.0  # what JSON gets for identical outputs (infinite PSNR)
FLOAT64_CHUNK = 8  # cases per float64 call: bounds the attention matrices' memory


def finite_or_none(value: float, digits: int | None = None) -> float | None:
    """JSON has no NaN or Infinity: a non-finite number is stored as null (the failures say why)."""
    if not math.isfinite(value):
        return None
    return value if digits is None else round(value, digits)


@dataclass(frozen=True)
class CaseError:
    case: str
    max_abs: float
    max_ref: float
    psnr: float
    finite: bool


@dataclass(frozen=True)
class Float64Check:
    """Errors against the float64 run: the artifact's and the PyTorch fp32 reference's."""

    multiple: float
    artifact: list[CaseError]
    reference: list[CaseError]

    @property
    def floor_max_abs(self) -> float:
        return max(c.max_abs for c in self.reference)

    @property
    def floor_psnr(self) -> float:
        return min(c.psnr for c in self.reference)

    def to_dict(self) -> dict:
        return {
            "truth": "pytorch float64, same model and inputs",
            "multiple": self.multiple,
            "artifact_max_abs_error": finite_or_none(max(c.max_abs for c in self.artifact)),
            "artifact_min_psnr_db": finite_or_none(min(min(c.psnr for c in self.artifact), PSNR_IDENTICAL), 3),
            "reference_max_abs_error": finite_or_none(self.floor_max_abs),
            "reference_min_psnr_db": finite_or_none(min(self.floor_psnr, PSNR_IDENTICAL), 3),
        }


@dataclass(frozen=True)
class ParityResult:
    artifact: str
    tolerance: Tolerance
    cases: list[CaseError]  # against the PyTorch fp32 reference
    failures: list[str]
    float64: Float64Check | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def worst(self) -> CaseError:
        return min(self.float64.artifact if self.float64 else self.cases, key=lambda c: (c.finite, c.psnr))

    @property
    def min_psnr(self) -> float:
        return min(c.psnr for c in self.cases)

    @property
    def max_abs(self) -> float:
        return max(c.max_abs for c in self.cases)

    def summary(self) -> str:
        w = self.worst
        status = "PASS" if self.passed else "FAIL"
        head = f"{status} {self.artifact}: {len(self.cases)} cases, "
        if self.float64 is None:
            return f"{head}min PSNR {self.min_psnr:.1f} dB (gate {self.tolerance.min_psnr:g}), max abs {self.max_abs:.2e}; worst {w.case}"
        f = self.float64
        f_max_abs, f_psnr = max(c.max_abs for c in f.artifact), min(c.psnr for c in f.artifact)  # inf/-inf print as such
        return (
            f"{head}vs float64: max abs {f_max_abs:.2e}, min PSNR {min(f_psnr, PSNR_IDENTICAL):.1f} dB "
            f"(pytorch fp32 vs float64: {f.floor_max_abs:.2e}, {min(f.floor_psnr, PSNR_IDENTICAL):.1f} dB; allowed: "
            f"{self.float64.multiple:g}x that, or {self.tolerance.max_abs_rel:g} x max|eps| and {self.tolerance.min_psnr:g} dB; "
            f"never under {self.tolerance.float64_min_psnr:g} dB); "
            f"vs pytorch fp32: max abs {self.max_abs:.2e}, min PSNR {self.min_psnr:.1f} dB; worst {w.case}"
        )

    def as_gate(self) -> GateResult:
        return GateResult("parity", self.artifact, tuple(self.failures), self.to_dict(), self.summary())

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "gate": asdict(self.tolerance),
            "cases": len(self.cases),
            "min_psnr_db": finite_or_none(min(self.min_psnr, PSNR_IDENTICAL), 3),  # null: an output was NaN/Inf
            "max_abs_error": finite_or_none(self.max_abs),
            "worst_case": self.worst.case,
            "failures": self.failures,
            **({"float64": self.float64.to_dict()} if self.float64 else {}),
        }


def psnr(ref: np.ndarray, out: np.ndarray) -> float:
    rmse = float(np.sqrt(np.mean((out.astype(np.float64) - ref.astype(np.float64)) ** 2)))
    peak = float(np.abs(ref).max())
    return math.inf if rmse == 0 else 20 * math.log10(peak / rmse)


def compare(case: str, ref: np.ndarray, out: np.ndarray) -> CaseError:
    finite = bool(np.isfinite(out).all())
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    return CaseError(
        case=case,
        max_abs=float(diff.max()) if finite else math.inf,
        max_ref=float(np.abs(ref).max()),
        psnr=psnr(ref, out) if finite else -math.inf,
        finite=finite,
    )


# The references are pure functions of the network (weights and attention lowering) and the
# cases, so one process computes each once: an export, its verify and a compare of the same
# checkpoint share them (the float64 run is the most expensive step of an export). 16 entries:
# a few networks' pairs (at most 16 x 7.6 MB, the real v2's float64 eps on the 77 cases).
REFERENCE_CACHE: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()
REFERENCE_CACHE_SIZE = 16


def network_key(model: torch.nn.Module) -> str:
    """A digest of everything that decides the model's outputs: weights, config, attention lowering."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    lowering = [(n, m.impl, m.query_chunk, m.head_group) for n, m in model.named_modules() if hasattr(m, "query_chunk")]
    config = getattr(model, "config", None)
    digest.update(repr((lowering, config.to_dict() if config is not None else None)).encode())
    return digest.hexdigest()


def cases_key(cases: Cases) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in (cases.x, cases.t, cases.y))).hexdigest()


def cached_reference(kind: str, model: torch.nn.Module, cases: Cases, compute) -> np.ndarray:
    key = (kind, network_key(model), cases_key(cases))
    if key in REFERENCE_CACHE:
        REFERENCE_CACHE.move_to_end(key)
        return REFERENCE_CACHE[key].copy()
    REFERENCE_CACHE[key] = out = compute()
    while len(REFERENCE_CACHE) > REFERENCE_CACHE_SIZE:
        REFERENCE_CACHE.popitem(last=False)
    return out.copy()


def float32_reference(model: torch.nn.Module, cases: Cases) -> np.ndarray:
    """eps of the PyTorch fp32 model (CPU) on every case: the reference of every file's gate."""
    return cached_reference("float32", model, cases, lambda: TorchBackend(model, "cpu")(cases.x, cases.t, cases.y))


def float64_outputs(model: torch.nn.Module, cases: Cases) -> np.ndarray:
    """eps of a float64 copy of model (CPU) on every case: the truth the float32 gates use."""
    return cached_reference("float64", model, cases, lambda: run_float64(model, cases))


def run_float64(model: torch.nn.Module, cases: Cases) -> np.ndarray:
    model64 = copy.deepcopy(model).cpu().double().eval()
    outs = []
    with torch.inference_mode():
        for start in range(0, len(cases), FLOAT64_CHUNK):
            part = slice(start, start + FLOAT64_CHUNK)
            x = torch.from_numpy(cases.x[part]).double()
            t = torch.from_numpy(cases.t[part]).double()
            outs.append(model64(x, t, torch.from_numpy(cases.y[part]).long()).numpy())
    return np.concatenate(outs)


def case_failure(err: CaseError, min_psnr: float, max_abs: float | None) -> str | None:
    if not err.finite:
        return f"{err.case}: output has NaN/Inf"
    if err.psnr < min_psnr:
        return f"{err.case}: PSNR {err.psnr:.1f} dB < {min_psnr:.1f} dB"
    if max_abs is not None and err.max_abs > max_abs:
        return f"{err.case}: max abs {err.max_abs:.2e} > {max_abs:.2e} (max|ref| {err.max_ref:.3f})"
    return None


def check_parity(
    artifact: str, ref: np.ndarray, out: np.ndarray, cases: Cases, tol: Tolerance, truth: np.ndarray | None = None
) -> ParityResult:
    """ref, out: eps [N,...] for the N cases, both NCHW; truth: the float64 eps, needed by
    a tolerance with float64_multiple."""
    errors = [compare(cases.describe(i), ref[i], out[i]) for i in range(len(cases))]
    if tol.float64_multiple is None:
        failures = [
            case_failure(e, tol.min_psnr, None if tol.max_abs_rel is None else tol.max_abs_rel * e.max_ref) for e in errors
        ]
        return ParityResult(artifact, tol, errors, [f for f in failures if f])
    if truth is None:
        raise ValueError(f"the {artifact} gate is measured against float64: pass the float64 outputs")
    check = Float64Check(
        tol.float64_multiple,
        artifact=[compare(cases.describe(i), truth[i], out[i]) for i in range(len(cases))],
        reference=[compare(cases.describe(i), truth[i], ref[i]) for i in range(len(cases))],
    )
    if not all(e.finite for e in check.reference):
        return ParityResult(artifact, tol, errors, ["the PyTorch fp32 reference itself has NaN/Inf: nothing to compare"], check)
    k = tol.float64_multiple
    min_psnr = max(min(tol.min_psnr, check.floor_psnr - 20 * math.log10(k)), tol.float64_min_psnr or -math.inf)
    failures = []
    for e in check.artifact:
        allowed = max(k * check.floor_max_abs, (tol.max_abs_rel or 0.0) * e.max_ref)
        failures.append(case_failure(e, min_psnr, allowed))
    return ParityResult(artifact, tol, errors, [f for f in failures if f], check)


def run_parity(
    files: dict[str, Path], spec: DenoiserSpec, cases, ref: np.ndarray, threads: int | None, truth: np.ndarray | None = None
) -> dict[str, ParityResult]:
    """Every file against the fp32 reference ref (and, for the float32 gates, the float64 truth)."""
    results = {}
    for name, path in files.items():
        out = open_artifact(path, spec, threads)(cases.x, cases.t, cases.y)
        results[name] = check_parity(name, ref, out, cases, spec.tolerances[PRECISION[name]], truth)
        log.info(results[name].summary())
    return results
