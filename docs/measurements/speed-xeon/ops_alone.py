"""sa6's first QK^T, P x V and softmax of a TFLite file, each cut out alone (verify/cuts.py) and timed
on one thread in on-CPU time against the same operation in onnxruntime and numpy:

    .venv/bin/python docs/measurements/speed-xeon/ops_alone.py FILE.tflite

(Run on the all-heads file of the previous default for the numbers in docs/performance.md.)
"""

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter
from onnx import TensorProto, helper

from mobilegen.verify.cuts import TFLiteGraph
from mobilegen.verify.profile import tflite_values

p = Path(sys.argv[1])
g = TFLiteGraph(p)
vals = tflite_values(p, 1)


def cpu_ms(fn, n=30):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(n):
        s = time.process_time()
        fn()
        ts.append((time.process_time() - s) * 1e3)
    return statistics.median(ts)


bmms = [j for j, k in enumerate(g.kinds) if k == "BATCH_MATMUL" and g.block(j) == "sa6"][:2]
sms = [j for j, k in enumerate(g.kinds) if k == "SOFTMAX" and g.block(j) == "sa6"][:1]
for j in bmms + sms:
    op = g.graph.operators[j]
    content, ins = g.cut([j])
    it = Interpreter(model_content=content, num_threads=1)
    it.allocate_tensors()
    arrs = []
    for d, t in zip(it.get_input_details(), ins):
        a = vals[t].reshape(d["shape"]).astype(d["dtype"])
        it.set_tensor(d["index"], a)
        arrs.append(a)
    shapes = [list(a.shape) for a in arrs]
    x = cpu_ms(it.invoke)
    if g.kinds[j] == "BATCH_MATMUL":
        nodes = [helper.make_node("MatMul", ["a", "b"], ["c"])]
        out_shape = shapes[0][:-1] + [shapes[1][-1]]
        ref = lambda: np.matmul(arrs[0], arrs[1])
    else:
        nodes = [helper.make_node("Softmax", ["a"], ["c"], axis=-1)]
        out_shape = shapes[0]
        ref = lambda: None
    gr = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip("ab", shapes)],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, out_shape)],
    )
    m = helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = dict(zip("ab", arrs))
    o = cpu_ms(lambda: s.run(None, feeds))
    n = cpu_ms(ref)
    print(g.kinds[j], shapes, f"xnnpack {x:.3f} ms  ort {o:.3f} ms  numpy {n:.3f} ms")
