"""One parity check for every backend: collect every case, report, gate.

Errors are measured against a float32 reference on the same inputs. A case fails on
NaN/Inf, on PSNR below the gate, or on max abs error above max_abs_rel * max|ref|.
Nothing is downgraded to a warning.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from mobilegen.calibration import Cases
from mobilegen.exporter.spec import Tolerance


PSNR_IDENTICAL = 999.0  # what JSON gets for identical outputs (infinite PSNR)


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
class ParityResult:
    artifact: str
    tolerance: Tolerance
    cases: list[CaseError]
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def worst(self) -> CaseError:
        return min(self.cases, key=lambda c: (c.finite, c.psnr))

    @property
    def min_psnr(self) -> float:
        return min(c.psnr for c in self.cases)

    @property
    def max_abs(self) -> float:
        return max(c.max_abs for c in self.cases)

    def summary(self) -> str:
        w = self.worst
        status = "PASS" if self.passed else "FAIL"
        return (
            f"{status} {self.artifact}: {len(self.cases)} cases, min PSNR {self.min_psnr:.1f} dB "
            f"(gate {self.tolerance.min_psnr:g}), max abs {self.max_abs:.2e}; worst {w.case}"
        )

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "gate": asdict(self.tolerance),
            "cases": len(self.cases),
            "min_psnr_db": finite_or_none(min(self.min_psnr, PSNR_IDENTICAL), 3),  # null: an output was NaN/Inf
            "max_abs_error": finite_or_none(self.max_abs),
            "worst_case": self.worst.case,
            "failures": self.failures,
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


def check_parity(artifact: str, ref: np.ndarray, out: np.ndarray, cases: Cases, tol: Tolerance) -> ParityResult:
    """ref, out: eps [N,...] for the N cases, both NCHW."""
    errors, failures = [], []
    for i in range(len(cases)):
        err = compare(cases.describe(i), ref[i], out[i])
        errors.append(err)
        if not err.finite:
            failures.append(f"{err.case}: output has NaN/Inf")
        elif err.psnr < tol.min_psnr:
            failures.append(f"{err.case}: PSNR {err.psnr:.1f} dB < {tol.min_psnr:g} dB")
        elif tol.max_abs_rel is not None and err.max_abs > tol.max_abs_rel * err.max_ref:
            failures.append(f"{err.case}: max abs {err.max_abs:.2e} > {tol.max_abs_rel:g} x max|ref| {err.max_ref:.3f}")
    return ParityResult(artifact, tol, errors, failures)
