"""Inputs that exercise the denoiser the way sampling does (parity sets, calibration)."""

from mobilegen.calibration.inputs import (
    PARITY_TIMESTEPS,
    Cases,
    calibration_cases,
    forward_process_cases,
    trajectory_cases,
)

__all__ = ["PARITY_TIMESTEPS", "Cases", "calibration_cases", "forward_process_cases", "trajectory_cases"]
