"""Inputs that exercise the denoiser the way sampling does (parity sets, calibration)."""

from mobilegen.calibration.inputs import PARITY_TIMESTEPS, Cases, forward_process_cases

__all__ = ["PARITY_TIMESTEPS", "Cases", "forward_process_cases"]
