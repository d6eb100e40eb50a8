"""A TFLite denoiser made elsewhere, run on our contract (verify/foreign.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mobilegen.contract.manifest import spec_from_manifest
from mobilegen.errors import InvalidInput, MobileGenError
from mobilegen.runtime.backends import TFLiteBackend
from mobilegen.verify.foreign import ForeignTFLite, parse_inputs


def test_inputs_are_named_x_t_and_y():
    assert parse_inputs("x=input,t=onnx__Unsqueeze_1,y= onnx__Cast_2 ") == {"x": "input", "t": "onnx__Unsqueeze_1", "y": "onnx__Cast_2"}
    for bad in ("x=input,t=t", "x=a,t=b,z=c", ""):
        with pytest.raises(InvalidInput, match="must name x, t and y"):
            parse_inputs(bad)


def test_our_own_file_read_as_a_foreign_one_gives_our_backends_eps(tiny_export):
    """The foreign path (names, layout from x's shape, dtypes from the file) on an NHWC file of ours."""
    from helpers import manifest_of

    out = tiny_export[0]
    path = out / "denoiser_float32.tflite"
    foreign = ForeignTFLite(path, parse_inputs("x=x,t=t,y=y"), threads=1)
    assert not foreign.nchw and foreign.batch == 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)  # two rows through a batch-1 file
    t, y = np.array([10.0, 700.0], np.float32), np.array([3, -1], np.int32)
    ours = TFLiteBackend(path, spec_from_manifest(manifest_of(out)), 1)(x, t, y)
    assert np.array_equal(foreign(x, t, y), ours)
    with pytest.raises(MobileGenError, match="has no signature input input"):
        ForeignTFLite(path, parse_inputs("x=input,t=t,y=y"), threads=1)
