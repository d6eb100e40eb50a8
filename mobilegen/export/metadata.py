"""TFLite metadata: the block Android Studio's ML Model Binding and the LiteRT support
library read, written here by hand.

The format is public (tflite-support's ``metadata_schema.fbs``): the model's
``metadata`` list gets an entry named ``TFLITE_METADATA`` that points at a new buffer
holding a ``ModelMetadata`` flatbuffer with file identifier ``M001``; associated files
follow the model as a zip archive appended to the file, each entry stored
uncompressed (the Android reader maps them, it cannot inflate). The few tables we need
are written with ``flatbuffers.Builder``, field slots in schema order; every field
used exists since schema 1.0.0, hence ``min_parser_version`` 1.0.0.

What goes in: name, description (with the source checkpoint's sha256, the manifest's
``source.sha256``), version (the mobilegen version), author, license; one entry per
input and output in subgraph order (x, t, y -> eps) with description, dimension names
and, for t and y, the value range as ``Stats``; ``labels.txt`` is attached to ``y``
(TENSOR_VALUE_LABELS: y's values index it), not to ``eps``, whose axes are pixels.

The model flatbuffer is rebuilt with the schema module ai-edge-litert ships. Buffers
stored past the flatbuffer (the quantizer writes int8 files that way) are kept
byte for byte: the block of data is copied after the new flatbuffer at the same
alignment and every offset is moved by the same amount.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from mobilegen.contract.defaults import LABELS_FILE
from mobilegen.contract.spec import DenoiserSpec
from mobilegen.errors import ExportError, MissingDependencyError

METADATA_NAME = "TFLITE_METADATA"
IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so exports stay byte-identical run to run
TAIL_ALIGN = 64
# The converter marks every file as fit for reduced-precision (float16) arithmetic. Nothing at
# export verifies a float16 path, so the entry is dropped: a runtime gets no hint we cannot back.
REDUCED_PRECISION = "reduced_precision_support"
# Schema enums used (metadata_schema.fbs).
FEATURE_PROPERTIES = 1  # ContentProperties union member
TENSOR_VALUE_LABELS = 3  # AssociatedFileType


@dataclass(frozen=True)
class About:
    """What the metadata says about the file, beyond the IO contract."""

    arch: str
    precision: str  # "float32", "float16", "int8_dynamic", "int8_full"
    source_sha256: str | None  # None: the built-in untrained default model, no checkpoint file
    T: int
    labels: tuple[str, ...]
    license: str = "MIT"


def _schema():
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as tfl
    except ImportError:
        raise MissingDependencyError("ai-edge-litert", "writing TFLite metadata") from None
    return flatbuffers, tfl


def tensor_texts(spec: DenoiserSpec, about: About) -> dict[str, dict]:
    """Per tensor name: description, dimension names, value range (or None)."""
    dims = ["batch", "channel", "height", "width"] if spec.layout == "NCHW" else ["batch", "height", "width", "channel"]
    shape = list(spec.image_shape)
    n = len(about.labels)
    return {
        "x": {
            "description": f"Noisy image x_t, float32 {spec.layout} {shape}: x_T ~ N(0, I) at the first step, then the "
            "sampler's state; images live in [-1, 1].",
            "dims": dims,
            "range": None,
        },
        "t": {
            "description": f"Timestep index 0..{about.T - 1} as float32 [{spec.batch}].",
            "dims": ["batch"],
            "range": (0, about.T - 1),
        },
        "y": {
            "description": f"Class index int32 [{spec.batch}] into labels.txt (0..{n - 1}); -1 = unconditional "
            "(the classifier-free guidance pass).",
            "dims": ["batch"],
            "range": (-1, n - 1),
        },
        "eps": {"description": f"Predicted noise eps, float32 {spec.layout} {shape}, like x.", "dims": dims, "range": None},
    }


def model_texts(spec: DenoiserSpec, about: About) -> dict[str, str]:
    try:
        version = importlib_metadata.version("mobilegen")
    except importlib_metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "name": f"MobileGen denoiser ({about.arch}, {about.precision})",
        "description": (
            f"Class-conditional DDPM denoiser (x, t, y) -> eps for {spec.image_size}x{spec.image_size} CIFAR-10 images, "
            f"batch {spec.batch}, layout {spec.layout}. One call is one denoising step; the schedule and the sampler "
            "(DDIM, classifier-free guidance) run in the app, from manifest.json. "
            + (
                f"Source checkpoint sha256: {about.source_sha256}"
                if about.source_sha256
                else "Source: the untrained default model (no checkpoint file), NOT a trained model"
            )
        ),
        "version": f"mobilegen {version}",
        "author": "mobilegen-export",
        "license": about.license,
    }


class _Writer:
    """A ModelMetadata flatbuffer, table by table (children before parents, as flatbuffers needs)."""

    def __init__(self, flatbuffers):
        self.b = flatbuffers.Builder(1024)

    def strings(self, items: list[str]) -> int:
        return self.offsets([self.b.CreateString(s) for s in items])

    def offsets(self, items: list[int]) -> int:
        self.b.StartVector(4, len(items), 4)
        for item in reversed(items):
            self.b.PrependUOffsetTRelative(item)
        return self.b.EndVector()

    def floats(self, values: list[float]) -> int:
        self.b.StartVector(4, len(values), 4)
        for v in reversed(values):
            self.b.PrependFloat32(v)
        return self.b.EndVector()

    def table(self, offsets: dict[int, int], bytes_: dict[int, int] | None = None) -> int:
        """A table from slot -> child offset and slot -> int8 value."""
        slots = list(offsets) + list(bytes_ or {})
        self.b.StartObject(max(slots) + 1 if slots else 0)
        for slot, value in offsets.items():
            self.b.PrependUOffsetTRelativeSlot(slot, value, 0)
        for slot, value in (bytes_ or {}).items():
            self.b.PrependInt8Slot(slot, value, 0)
        return self.b.EndObject()

    def text(self, s: str) -> int:
        return self.b.CreateString(s)


def metadata_flatbuffer(input_names: list[str], output_names: list[str], spec: DenoiserSpec, about: About) -> bytes:
    """The M001 ModelMetadata for a graph with these inputs and outputs, in subgraph order."""
    flatbuffers, _ = _schema()
    texts = tensor_texts(spec, about)
    unknown = [n for n in input_names + output_names if n not in texts]
    if unknown or sorted(input_names) != ["t", "x", "y"] or output_names != ["eps"]:
        raise ExportError(
            f"TFLite metadata: the graph's tensors are inputs {input_names}, outputs {output_names}; "
            "expected inputs x, t, y and output eps"
        )
    w = _Writer(flatbuffers)

    def tensor(name: str) -> int:
        info = texts[name]
        # AssociatedFile: name 0, description 1, type 2; TensorMetadata: name 0, description 1,
        # dimension_names 2, content 3, stats 5, associated_files 6; Content: content_properties_type 0,
        # content_properties 1; Stats: max 0, min 1.
        files = None
        if name == "y":
            label_file = w.table(
                {0: w.text(LABELS_FILE), 1: w.text("Class names, one per line, in index order.")}, {2: TENSOR_VALUE_LABELS}
            )
            files = w.offsets([label_file])
        stats = None
        if info["range"] is not None:
            lo, hi = info["range"]
            stats = w.table({0: w.floats([float(hi)]), 1: w.floats([float(lo)])})
        content = w.table({1: w.table({})}, {0: FEATURE_PROPERTIES})
        fields = {0: w.text(name), 1: w.text(info["description"]), 2: w.strings(info["dims"]), 3: content}
        if stats is not None:
            fields[5] = stats
        if files is not None:
            fields[6] = files
        return w.table(fields)

    inputs = w.offsets([tensor(n) for n in input_names])
    outputs = w.offsets([tensor(n) for n in output_names])
    # SubGraphMetadata: name 0, description 1, input_tensor_metadata 2, output_tensor_metadata 3.
    subgraph = w.table({0: w.text("serving_default"), 1: w.text("One denoising step."), 2: inputs, 3: outputs})
    m = model_texts(spec, about)
    # ModelMetadata: name 0, description 1, version 2, subgraph_metadata 3, author 4, license 5,
    # min_parser_version 7.
    root = w.table(
        {
            0: w.text(m["name"]),
            1: w.text(m["description"]),
            2: w.text(m["version"]),
            3: w.offsets([subgraph]),
            4: w.text(m["author"]),
            5: w.text(m["license"]),
            7: w.text(MIN_PARSER_VERSION),
        }
    )
    w.b.Finish(root, file_identifier=IDENTIFIER)
    return bytes(w.b.Output())


def with_labels_zip(model: bytes, labels: tuple[str, ...]) -> bytes:
    """The model followed by its associated files as a zip: entries stored (not deflated), a
    fixed date, offsets counted from the start of the file (as a reader of the whole file expects)."""
    out = io.BytesIO()
    out.write(model)
    with zipfile.ZipFile(out, "w") as z:
        info = zipfile.ZipInfo(LABELS_FILE, date_time=ZIP_DATE)
        info.compress_type = zipfile.ZIP_STORED
        z.writestr(info, "\n".join(labels) + "\n")
    return out.getvalue()


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def signature_names(model, path: Path) -> tuple[list[str], list[str]]:
    """The serving_default signature's names of the subgraph's inputs and outputs, in subgraph
    order (a tensor may be called otherwise in the graph, e.g. int8 full's ``eps_dequant``)."""
    sigs = [s for s in model.signatureDefs or [] if _name(s.signatureKey) == "serving_default"]
    if not sigs:
        raise ExportError(f"{path.name} has no serving_default signature; the app calls the model through it")
    graph = model.subgraphs[sigs[0].subgraphIndex]
    by_index = {int(m.tensorIndex): _name(m.name) for m in list(sigs[0].inputs) + list(sigs[0].outputs)}
    missing = [int(i) for i in list(graph.inputs) + list(graph.outputs) if int(i) not in by_index]
    if missing:
        raise ExportError(f"{path.name}: graph tensors {missing} are not in the serving_default signature")
    return [by_index[int(i)] for i in graph.inputs], [by_index[int(i)] for i in graph.outputs]


def add_metadata(path: Path, spec: DenoiserSpec, about: About) -> Path:
    """Rewrite the .tflite file at path with the metadata block and labels.txt appended."""
    flatbuffers, tfl = _schema()
    raw = path.read_bytes()
    model = tfl.ModelT.InitFromPackedBuf(bytearray(raw), 0)
    if any(_name(m.name) == METADATA_NAME for m in model.metadata or []):
        raise ExportError(f"{path.name} already holds {METADATA_NAME}; metadata is added once, to a fresh file")
    names = signature_names(model, path)
    block = tfl.BufferT()
    block.data = np.frombuffer(metadata_flatbuffer(*names, spec, about), dtype=np.uint8)
    model.buffers.append(block)
    entry = tfl.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [m for m in model.metadata or [] if _name(m.name) != REDUCED_PRECISION] + [entry]
    external = [b for b in model.buffers if getattr(b, "offset", 0) > 1]
    tail, start = b"", 0
    if external:  # data past the flatbuffer: [start, end) of the old file
        start = min(b.offset for b in external)
        tail = raw[start : max(b.offset + b.size for b in external)]
    flat = _pack(flatbuffers, model)
    if external:
        new_start = len(flat) + (start - len(flat)) % TAIL_ALIGN
        for b in external:
            b.offset += new_start - start
        flat = _pack(flatbuffers, model)
        if len(flat) > new_start:  # cannot happen (offsets are fixed-size fields); guard the file anyway
            raise ExportError(f"{path.name}: the rebuilt flatbuffer overlaps its external buffers")
        flat = flat + bytes(new_start - len(flat)) + tail
    tmp = path.with_name(path.name + ".metadata-tmp")
    tmp.write_bytes(with_labels_zip(flat, about.labels))
    tmp.replace(path)
    return path


def _pack(flatbuffers, model) -> bytes:
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
