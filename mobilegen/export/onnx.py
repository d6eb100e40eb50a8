"""PyTorch -> ONNX: static shapes, simplified, checked for data-dependent ops."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from mobilegen.contract.defaults import ATTENTION_SPLIT
from mobilegen.contract.spec import DenoiserSpec
from mobilegen.errors import ExportError, MissingDependencyError
from mobilegen.export.wrapper import ExportedDenoiser
from mobilegen.models import UNet

log = logging.getLogger(__name__)

# Ops whose output shape depends on data or that carry control flow: the TFLite
# path (and most mobile runtimes) cannot run them with static shapes.
DYNAMIC_OPS = frozenset({"NonZero", "Unique", "Loop", "If", "Scan", "NonMaxSuppression", "Shape", "Expand", "Range"})


def example_inputs(spec: DenoiserSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.zeros(spec.image_shape)
    t = torch.full((spec.batch,), 500.0)
    y = torch.zeros((spec.batch,), dtype=torch.int32)
    return x, t, y


def onnx_op_types(path: str | Path) -> list[str]:
    import onnx

    return sorted({node.op_type for node in onnx.load(str(path)).graph.node})


def export_onnx(
    unet: UNet, spec: DenoiserSpec, path: Path, max_tensor_mb: float | None = None, split: str = ATTENTION_SPLIT
) -> Path:
    """Write a simplified, static-shape ONNX of (x, t, y) -> eps to path (attention bounded to max_tensor_mb,
    split per head or across all heads: models/budget.py)."""
    try:
        import onnx
        import onnxsim
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "onnx", "ONNX export") from None
    raw = path.with_suffix(".raw.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            ExportedDenoiser(unet, spec, max_tensor_mb, split),
            example_inputs(spec),
            str(raw),
            dynamo=False,
            opset_version=spec.opset,
            input_names=[s.name for s in spec.inputs],
            output_names=[s.name for s in spec.outputs],
            do_constant_folding=True,
        )
    model, ok = onnxsim.simplify(onnx.load(str(raw)))
    raw.unlink()
    if not ok:
        raise ExportError("onnxsim could not validate the simplified ONNX graph")
    model.producer_name, model.doc_string = "mobilegen", f"MobileGen {unet.arch} single-step denoiser (x, t, y) -> eps"
    onnx.checker.check_model(model)
    _check_static(onnx.shape_inference.infer_shapes(model))
    onnx.save(model, str(path))
    log.info("wrote %s (%s)", path, ", ".join(onnx_op_types(path)))
    return path


def _check_static(model) -> None:
    ops = {n.op_type for n in model.graph.node}
    bad = sorted(ops & DYNAMIC_OPS)
    if bad:
        raise ExportError(f"the ONNX graph contains ops with data-dependent shapes or control flow: {', '.join(bad)}")
    values = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    for v in values:
        dims = v.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise ExportError(f"the ONNX graph has a dynamic shape at tensor {v.name!r}")
