"""A probe, not a benchmark table: does OpenVINO's CPU plugin keep a node f32 under a bf16
inference precision when the node carries the `disable_fp16_compression` rt_info attribute set
from Python? (An "openvino bf16 mixed" repair would need it.)

Run after `benchmarks/peers.py` (it reads that run's float OpenVINO IR and photo crops):
`.venv/bin/python benchmarks/ov_bf16_mixed_probe.py mobilenetv2`. It prints, per marking, the
runtime precisions of the compiled model, top-1 agreement with f32 on 200 crops, and batch-1 ms.
On OpenVINO 2026.4.1 (2026-11-27): no key changed anything (57 bf16 ops, 89.5% agreement, whether
2, 17 or all 53 weighted ops were marked)."""
import glob
import json
import os
import sys
import time

import numpy as np
import openvino as ov

sys.path.insert(0, os.path.dirname(__file__))
from _common import WORK  # noqa: E402

model_name = sys.argv[1] if len(sys.argv) > 1 else "mobilenetv2"
root = str(WORK / "peers" / f"optimize-{model_name}" / "artifacts")
cands = []
for d in glob.glob(root + "/*/"):
    st = json.load(open(d + "status.json"))
    if st.get("name") == "openvino" and st.get("kind") == "convert" and st["details"].get("calibration_samples") == 0 and os.path.exists(d + "model.bin"):
        cands.append((os.path.getsize(d + "model.bin"), d))
xml = max(cands)[1] + "model.xml"
x = np.load(WORK / "peers" / f"{model_name}_crops.npz")["x"][:200]
core = ov.Core()

def compiled(m, prec):
    return core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": prec, "PERFORMANCE_HINT": "LATENCY"})

def run(c):
    req = c.create_infer_request()
    out = np.concatenate([req.infer([x[i:i + 1]])[0] for i in range(len(x))])
    t = []
    for _ in range(3):
        s = time.perf_counter()
        for i in range(40):
            req.infer([x[i:i + 1]])
        t.append((time.perf_counter() - s) / 40 * 1000)
    return out, min(t)

base = core.read_model(xml)
ref, t32 = run(compiled(base, "f32"))
top = ref.argmax(-1)
print("f32", round(t32, 3), "ms")

def trial(label, names):
    m = core.read_model(xml)
    n = 0
    for op in m.get_ordered_ops():
        if op.get_friendly_name() in names:
            op.get_rt_info()[KEY] = VAL
            n += 1
    c = compiled(m, "bf16")
    prec = {}
    for op in c.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        p = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"
        prec[p] = prec.get(p, 0) + 1
    out, t = run(c)
    print(f"{label}: marked {n}, runtime precisions {prec}, agreement {np.mean(out.argmax(-1) == top):.4f}, {t:.3f} ms", flush=True)

ops = [op for op in base.get_ordered_ops() if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")]
names = [op.get_friendly_name() for op in ops]
print(len(names), "weighted ops")
for KEY, VAL in (("disable_fp16_compression", True), ("disable_fp16_compression_0", True), ("precise_0", "")):
    trial(f"all weighted f32 via {KEY}={VAL!r}", set(names))
    trial(f"first+last f32 via {KEY}={VAL!r}", {names[0], names[-1]})
