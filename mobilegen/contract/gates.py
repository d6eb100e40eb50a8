"""The one result every gate returns (parity, memory, trajectory, metadata, targets).

A gate is a function ``(artifacts, ...) -> GateResult``; the export pipeline publishes
only when every result passed, else raises ``GateError`` with all of them, and the CLI's
group prints their summaries and exits 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GateResult:
    gate: str  # "parity", "memory", "trajectory", ...
    subject: str  # what was checked: a file name, or "export"
    failures: tuple[str, ...] = ()
    figures: dict = field(default_factory=dict)  # the measured numbers, JSON-ready
    text: str = ""  # the one-line summary the gate wrote

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        return self.text or f"{status} {self.gate} {self.subject}" + (f": {'; '.join(self.failures)}" if self.failures else "")

    def to_dict(self) -> dict:
        return {
            "gate": self.gate,
            "subject": self.subject,
            "passed": self.passed,
            "failures": list(self.failures),
            "figures": self.figures,
        }


def failed(results) -> list[GateResult]:
    return [r for r in results if not r.passed]
