"""An independent reader of TFLite metadata for the tests: tflite-support's own generated
flatbuffer modules (metadata_schema_py_generated, schema_py_generated; Google's code, not our
writer's), loaded from the files scripts/install.sh puts in .deps/tflite-support (installed with
--no-deps into that folder: its compiled modules and dependencies conflict with ours, so it
never goes into the venv), plus Python's zipfile for the associated files."""

from __future__ import annotations

import importlib.util
import io
import zipfile
from pathlib import Path

import pytest

GENERATED = Path(__file__).resolve().parents[1] / ".deps" / "tflite-support" / "tensorflow_lite_support" / "metadata"


def generated_modules():
    if not (GENERATED / "metadata_schema_py_generated.py").is_file():
        pytest.skip(f"tflite-support's generated readers are not in {GENERATED} (scripts/install.sh installs them)")
    modules = []
    for name in ("metadata_schema_py_generated", "schema_py_generated"):
        spec = importlib.util.spec_from_file_location(f"tflite_support_{name}", GENERATED / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


def read(path: Path) -> dict:
    """What a reader of the whole file finds: metadata entries, the M001 block (object API),
    the serving_default signature's names of the subgraph inputs/outputs, the zip entries."""
    meta, schema = generated_modules()
    raw = path.read_bytes()
    model = schema.Model.GetRootAsModel(raw, 0)
    entries = {model.Metadata(i).Name().decode(): model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
    out: dict = {"entries": entries, "signatures": [model.SignatureDefs(i).SignatureKey().decode() for i in range(model.SignatureDefsLength())]}
    sig = model.SignatureDefs(0)
    names = {}
    for getter, count in ((sig.Inputs, sig.InputsLength()), (sig.Outputs, sig.OutputsLength())):
        for i in range(count):
            names[getter(i).TensorIndex()] = getter(i).Name().decode()
    graph = model.Subgraphs(sig.SubgraphIndex())
    out["graph_inputs"] = [names[graph.Inputs(i)] for i in range(graph.InputsLength())]
    out["graph_outputs"] = [names[graph.Outputs(i)] for i in range(graph.OutputsLength())]
    if "TFLITE_METADATA" in entries:
        block = model.Buffers(entries["TFLITE_METADATA"]).DataAsNumpy().tobytes()
        out["identifier_ok"] = meta.ModelMetadata.ModelMetadataBufferHasIdentifier(block, 0)
        out["identifier"] = block[4:8]
        out["metadata"] = meta.ModelMetadataT.InitFromPackedBuf(bytearray(block), 0)
    out["zip"] = {}
    if zipfile.is_zipfile(io.BytesIO(raw)):
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            out["zip"] = {info.filename: (info.compress_type, z.read(info).decode()) for info in z.infolist()}
    return out


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def check_metadata(path: Path, manifest: dict) -> None:
    """The issue's acceptance, for one file."""
    found = read(path)
    assert "TFLITE_METADATA" in found["entries"] and found["identifier"] == b"M001" and found["identifier_ok"]
    assert found["signatures"] == ["serving_default"]
    m = found["metadata"]
    assert text(m.minParserVersion) == "1.0.0" and text(m.license) and text(m.author) and text(m.version)
    assert manifest["model"]["arch"] in text(m.name)
    sha = manifest["source"]["sha256"]
    assert (f"Source checkpoint sha256: {sha}" if sha else "untrained default model") in text(m.description)
    sub = m.subgraphMetadata[0]
    inputs, outputs = [text(t.name) for t in sub.inputTensorMetadata], [text(t.name) for t in sub.outputTensorMetadata]
    assert inputs == found["graph_inputs"] == ["x", "t", "y"] and outputs == found["graph_outputs"] == ["eps"]
    tensors = {text(t.name): t for t in sub.inputTensorMetadata + sub.outputTensorMetadata}
    T, n = manifest["schedule"]["T"], len(manifest["labels"])
    assert (list(tensors["t"].stats.min), list(tensors["t"].stats.max)) == ([0], [T - 1])
    assert (list(tensors["y"].stats.min), list(tensors["y"].stats.max)) == ([-1], [n - 1])
    assert manifest["io"]["layout"] in text(tensors["x"].description) and "unconditional" in text(tensors["y"].description)
    assert [text(f.name) for f in tensors["y"].associatedFiles] == ["labels.txt"]
    kind, labels = found["zip"]["labels.txt"]
    assert kind == zipfile.ZIP_STORED and labels.split() == manifest["labels"] and len(manifest["labels"]) == 10
