"""Which precisions a CPU accelerates, and which reduced-precision runtimes are worth running on it:
pure functions of the CPU flags, checked on the flag sets of real machines."""

from __future__ import annotations

from keras_turbo.machine import accelerated_precisions
from keras_turbo.runtimes.here import precision_backends, skip_reason
from keras_turbo.runtimes import BACKENDS

SAPPHIRE_RAPIDS = {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                   "amx_bf16", "amx_int8"}
EPYC_GENOA = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}
HASWELL = {"avx2", "fma"}


def test_accelerated_precisions():
    assert accelerated_precisions(SAPPHIRE_RAPIDS) == {"bf16": ["amx_bf16", "avx512_bf16"], "fp16": ["avx512_fp16"],
                                                       "int8": ["amx_int8", "avx512_vnni", "avx_vnni"]}
    assert accelerated_precisions(EPYC_GENOA) == {"bf16": ["avx512_bf16"], "int8": ["avx512_vnni"]}
    assert accelerated_precisions(HASWELL) == {}


def test_reduced_precision_entries_follow_the_flags():
    for name, b in BACKENDS.items():
        assert b.precision in ("fp32", "tf32", "bf16", "fp16") and b.objective in (None, "latency", "throughput")
        # every reduced precision the CPU runs says what it needs (keras-jax's are GPU paths: no CPU flags)
        if b.requires != "jax":
            assert (b.precision == "fp32") == (not b.needs), name
        assert skip_reason(name, SAPPHIRE_RAPIDS) is None
    assert skip_reason("openvino-bf16", EPYC_GENOA) is None and skip_reason("tf-function-bf16", EPYC_GENOA) is None
    assert "no arithmetic for" in skip_reason("openvino-fp16", EPYC_GENOA)
    assert "needs one of amx_bf16, avx512_bf16" in skip_reason("openvino-bf16", HASWELL)
    assert skip_reason("openvino", HASWELL) is None and skip_reason("tf-function", HASWELL) is None


def test_backends_per_objective():
    latency = precision_backends(SAPPHIRE_RAPIDS, "latency")
    throughput = precision_backends(SAPPHIRE_RAPIDS, "throughput")
    assert "openvino-bf16" in latency and "openvino-throughput" not in latency
    assert {"litert-throughput", "onnxruntime-throughput"} <= set(throughput) - set(latency)
    assert "openvino-bf16-throughput" in throughput and "openvino" not in throughput and "openvino-bf16" not in throughput
    assert "tf-function-bf16" in latency and "tf-function-bf16" in throughput  # one path serves both
    assert all(why is None for why in latency.values())
    old = precision_backends(HASWELL, "latency")
    assert old["openvino"] is None and old["openvino-bf16"] and old["tf-function-bf16"]


def test_every_precision_the_planner_runs_here_is_the_one_that_executes():
    """On this machine, each OpenVINO entry and tf-function-bf16 that skip_reason lets the planner run
    executes in the precision it is named for (read back from OpenVINO's compiled model; from
    TensorFlow's outputs for bf16). An entry the CPU lacks the arithmetic for is skipped by the
    planner, and what it would really run in is recorded instead: on an AVX-512 BF16 CPU without
    AVX512-FP16 (AMD EPYC), OpenVINO runs an f16 hint as bf16 without a word."""
    from keras_turbo.machine import cpu_flags
    from keras_turbo.runtimes.here import executes_here

    flags = cpu_flags()
    probed = [n for n, b in BACKENDS.items() if b.requires == "openvino" or n == "tf-function-bf16"]
    for name in probed:
        b = BACKENDS[name]
        try:
            ran = executes_here(name)
        except Exception as e:  # OpenVINO refuses a bf16 hint on a CPU without AVX-512: the planner must skip it
            assert skip_reason(name, flags), (name, e)
            continue
        assert ran["source"] in ("compiled", "compared") and ran["requested"] == b.precision, (name, ran)
        if skip_reason(name, flags) is None:
            assert set(ran["ops"]) == {b.precision}, (name, ran)
        elif b.precision == "fp16":
            assert "fp16" not in ran["ops"], (name, ran)  # no fp16 arithmetic here, whatever it was asked


GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp " \
            "cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs " \
            "paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng\nCPU implementer\t: 0x41\n"
EPYC_CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse avx2 fma avx512f " \
               "avx512_vnni avx512_bf16\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu\n"


def test_cpuinfo_is_read_on_x86_and_arm():
    from keras_turbo.machine import parse_cpuinfo

    model, flags = parse_cpuinfo(EPYC_CPUINFO, "x86_64")
    assert model == "AMD EPYC 9R14" and {"avx512_vnni", "avx512_bf16"} <= flags and len(flags) == 7  # the first CPU's
    model, flags = parse_cpuinfo(GRAVITON3, "aarch64")
    assert model == "aarch64" and {"asimdhp", "asimddp", "i8mm", "bf16"} <= flags
    # ARM's half-precision and dot-product units count as accelerated, as x86's do
    assert accelerated_precisions(flags) == {"bf16": ["bf16"], "fp16": ["asimdhp"], "int8": ["asimddp", "i8mm"]}
