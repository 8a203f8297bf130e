"""Issue 15: untrusted model files write nothing and read nothing, outputs never destroy a user's
files, concurrent and interrupted runs stay correct.

Every attack is a crafted file with a canary: a path the file tries to write (or read) that
must not exist (or must not leak) afterwards, checked through each command that opens models.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from keras_turbo import _tf
from keras_turbo.cli import main
from keras_turbo.errors import DataError, ModelLoadError, OutputError, UnsafeModelError
from keras_turbo.model.gate import ALLOWED_OPS, NEVER, SAVER_OPS, check_savedmodel
from keras_turbo.quality import Budget

tf = _tf.tf()
SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_cli(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *needles):
    lines = [ln for ln in err.splitlines() if ln.strip() and "warning" not in ln]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("keras-turbo: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


# ------------------------------------------------------------------ crafted SavedModels

class _Evil(tf.saved_model.experimental.TrackableResource):
    """A resource whose initializer (run by TensorFlow at load time) does `how` to `target`."""

    def __init__(self, how, target):
        super().__init__()
        self.how, self.target = how, str(target)

    def _create_resource(self):
        return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name=f"evil_{self.how}_{id(self)}")

    def _initialize(self):
        t = self.target
        if self.how == "print":
            tf.print("pwned", output_stream="file://" + t)
        elif self.how == "writefile":
            tf.io.write_file(t, "pwned")
        elif self.how == "save":
            tf.raw_ops.Save(filename=t, tensor_names=["a"], data=[tf.constant(1.0)])
        elif self.how == "summary":
            h = tf.raw_ops.SummaryWriter(shared_name=f"evil{id(self)}", container="")
            tf.raw_ops.CreateSummaryFileWriter(writer=h, logdir=t, max_queue=1, flush_millis=1, filename_suffix="")
        elif self.how == "readfile":
            return tf.raw_ops.AssignVariableOp(resource=self.resource_handle,
                                               value=tf.cast(tf.strings.length(tf.io.read_file(t)), tf.float32))
        return tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=1.0)


class _Module(tf.Module):
    def __init__(self, how, target):
        super().__init__()
        self.w = tf.Variable(np.random.default_rng(0).standard_normal((64, 3)).astype("float32"))
        self.evil = _Evil(how, target) if how else None

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32, name="x")])
    def serve(self, x):
        out = tf.nn.softmax(tf.matmul(tf.reshape(x, [-1, 64]), self.w))
        if self.evil is not None:
            out = out + 0.0 * tf.raw_ops.ReadVariableOp(resource=self.evil.resource_handle, dtype=tf.float32)
        return {"output_0": out}


def make_savedmodel(folder: Path, how: str | None, target: Path) -> Path:
    m = _Module(how, target)
    tf.saved_model.save(m, str(folder), signatures={"serving_default": m.serve})
    if how != "readfile":
        assert not target.exists()  # saving must not have written it either
    return folder


ATTACKS = ["print", "writefile", "save", "summary", "readfile"]


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """attack -> (SavedModel folder, canary path)."""
    d = tmp_path_factory.mktemp("crafted")
    out = {}
    for how in ATTACKS:
        canary = d / f"canary_{how}"
        if how == "readfile":
            canary.write_text("secret")  # what it tries to read: the gate must refuse it all the same
        out[how] = (make_savedmodel(d / f"sm_{how}", how, canary), canary)
    out["clean"] = (make_savedmodel(d / "sm_clean", None, d / "unused"), d / "unused")
    return out


@pytest.fixture(scope="module")
def digits_like_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("npz") / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((40, 8, 8, 1), dtype="float32"), y=rng.integers(0, 3, 40))
    return path


def test_allow_list_holds_no_file_op():
    assert not (ALLOWED_OPS & NEVER)
    assert not (ALLOWED_OPS & SAVER_OPS)


def test_raw_tensorflow_load_would_write_the_canary(tmp_path):
    """The crafted file is a real attack: TensorFlow's own loader runs the initializer."""
    canary = tmp_path / "canary"
    sm = make_savedmodel(tmp_path / "sm", "writefile", canary)
    tf.saved_model.load(str(sm))
    assert canary.read_text() == "pwned"


@pytest.mark.parametrize("how", ATTACKS)
def test_inspect_refuses_each_attack(capsys, crafted, how):
    sm, canary = crafted[how]
    code, _, err = run_cli(capsys, "inspect", sm)
    one_line_error(code, err, str(sm), "--unsafe")
    assert {"print": "PrintV2", "writefile": "WriteFile", "save": "Save", "summary": "CreateSummaryFileWriter",
            "readfile": "ReadFile"}[how] in err
    assert not canary.exists() or canary.read_text() == "secret"


def test_clean_savedmodel_passes_and_serves(capsys, crafted, digits_like_npz):
    code, out, err = run_cli(capsys, "evaluate", crafted["clean"][0], "--data", digits_like_npz)
    assert code == 0, err
    assert "40 samples" in out


def test_writefile_initializer_refused_through_every_command(capsys, tmp_path, crafted, digits_like_npz):
    sm, canary = crafted["writefile"]
    code, _, err = run_cli(capsys, "evaluate", sm, "--data", digits_like_npz)
    one_line_error(code, err, "WriteFile")
    for to, suffix in (("litert", ".tflite"), ("onnx", ".onnx"), ("openvino", ".xml"), ("keras", ".keras")):
        code, _, err = run_cli(capsys, "convert", sm, "--to", to, "-o", tmp_path / f"m{suffix}")
        one_line_error(code, err, "WriteFile")
    code, _, err = run_cli(capsys, "optimize", sm, "--data", digits_like_npz, "--out", tmp_path / "opt")
    one_line_error(code, err, "WriteFile")
    # benchmark: refused before any runtime starts (reading the model's input shapes passes the
    # gate), like every other command.
    code, out, err = run_cli(capsys, "benchmark", sm, "--backend", "onnxruntime", "--backend", "litert",
                             "--backend", "openvino", "--backend", "tf-function", "--min-runs", "1",
                             "--min-seconds", "0", "--warmup-runs", "0", "--warmup-seconds", "0")
    one_line_error(code, err, "WriteFile")
    assert not canary.exists()


def test_exporters_gate_a_savedmodel_given_directly(crafted, tmp_path):
    """The exporters no longer rely on load_keras having checked: each one gates its input."""
    from keras_turbo.exporters import litert, onnx, openvino
    from keras_turbo.model import resolve

    for how in ("print", "writefile"):
        ref = resolve(crafted[how][0])
        for fn in (litert.export, onnx.export, openvino.export):
            with pytest.raises(UnsafeModelError):
                fn(ref, tmp_path / "out")
        assert not crafted[how][1].exists()


def test_print_initializer_refused_through_evaluate_and_optimize(capsys, tmp_path, crafted, digits_like_npz):
    sm, canary = crafted["print"]
    code, _, err = run_cli(capsys, "evaluate", sm, "--data", digits_like_npz, "--backend", "onnxruntime")
    one_line_error(code, err, "PrintV2")
    code, _, err = run_cli(capsys, "optimize", sm, "--data", digits_like_npz, "--out", tmp_path / "o")
    one_line_error(code, err, "PrintV2")
    assert not canary.exists()


def _mutated(src: Path, dst: Path, mutate) -> Path:
    import shutil

    from tensorflow.core.protobuf import saved_model_pb2

    shutil.copytree(src, dst)
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((dst / "saved_model.pb").read_bytes())
    mutate(sm.meta_graphs[0])
    (dst / "saved_model.pb").write_bytes(sm.SerializeToString())
    return dst


def test_saver_functions_only_callable_by_the_saver(crafted, tmp_path):
    clean = crafted["clean"][0]
    check_savedmodel(clean)  # TensorFlow's own SaveV2 / RestoreV2 functions pass

    def call_saver_from_serving(mg):
        lib = {f.signature.name: f for f in mg.graph_def.library.function}
        saver = next(n for n in lib if "traced_save" in n)
        serving = next(f for n, f in lib.items() if "traced" not in n)
        node = serving.node_def.add(name="smuggled", op="PartitionedCall")
        node.attr["f"].func.name = saver

    with pytest.raises(UnsafeModelError, match="checkpoint function"):
        check_savedmodel(_mutated(clean, tmp_path / "a", call_saver_from_serving))

    def save_in_serving(mg):
        serving = next(f for f in mg.graph_def.library.function if "traced" not in f.signature.name)
        serving.node_def.add(name="smuggled", op="SaveV2")

    with pytest.raises(UnsafeModelError, match="SaveV2"):
        check_savedmodel(_mutated(clean, tmp_path / "b", save_in_serving))

    with pytest.raises(UnsafeModelError, match="TensorFlow 1"):
        check_savedmodel(_mutated(clean, tmp_path / "c", lambda mg: mg.ClearField("object_graph_def")))
    check_savedmodel(tmp_path / "c", unsafe=True)  # --unsafe lets the user take it


def test_unsafe_exports_are_cached_apart(crafted, tmp_path):
    from keras_turbo import exporters
    from keras_turbo.model import resolve

    sm, canary = crafted["writefile"]
    unsafe_art = exporters.export(resolve(sm, unsafe=True), "onnx", tmp_path)
    assert unsafe_art.path.exists()
    canary.unlink(missing_ok=True)  # the converter ran the initializer: --unsafe allowed it
    with pytest.raises(UnsafeModelError, match="WriteFile"):
        exporters.export(resolve(sm), "onnx", tmp_path)  # not served the --unsafe artifact
    assert not canary.exists()
    assert resolve(sm).cache_key() != resolve(sm, unsafe=True).cache_key()


def test_keras_layer_zoo_passes_the_gate(tmp_path):
    """The allow-list must not refuse what Keras itself exports: recurrent control flow, text
    lookups, augmentation and discretization layers in one model."""
    from tests.conftest import keras

    L = keras.layers
    tv = L.TextVectorization(max_tokens=20, output_sequence_length=5, split="character")
    tv.adapt(["hello world foo", "bar baz Qux!"])
    text = keras.Input((1,), dtype="string", name="text")
    h = L.GRU(3)(L.LSTM(4, return_sequences=True)(L.Embedding(21, 4)(tv(text))))
    img = keras.Input((16, 16, 3), name="img")
    g = L.RandomRotation(0.1)(L.RandomFlip()(L.Resizing(12, 12)(L.Rescaling(1 / 255)(img))))
    g = L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(g))
    num = keras.Input((3,), name="num")
    n = L.CategoryEncoding(4, output_mode="count")(L.Discretization(bin_boundaries=[0.0, 1.0, 2.0])(num))
    model = keras.Model([text, img, num], L.Dense(2)(L.Concatenate()([h, g, n])))
    model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    check_savedmodel(tmp_path / "sm")


# ------------------------------------------------------------------ files a model names

@pytest.fixture(scope="module")
def openvino_ir(tmp_path_factory, model_files):
    from keras_turbo.convert import ConvertConfig, convert

    r = convert(model_files["sequential"][0], ConvertConfig(to="openvino"))
    return r.path


def test_symlinked_openvino_bin_is_refused(tmp_path, openvino_ir):
    import shutil

    import keras_turbo

    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(openvino_ir.with_suffix(".bin"), outside / "secret.bin")  # valid weights, but not its own
    model = tmp_path / "m" / "model.xml"
    model.parent.mkdir()
    shutil.copy(openvino_ir, model)
    model.with_suffix(".bin").symlink_to(outside / "secret.bin")
    with pytest.raises(ModelLoadError, match="outside"):
        keras_turbo.load(model)
    from keras_turbo.model import ModelRef
    from keras_turbo.runtimes.openvino import OpenVINOPredictor

    with pytest.raises(ModelLoadError, match="outside"):  # the runtime checks too (benchmark workers)
        OpenVINOPredictor(ModelRef(model, "openvino"))
    model.with_suffix(".bin").unlink()
    os.mkfifo(model.with_suffix(".bin"))  # a FIFO must not hang the load
    with pytest.raises(ModelLoadError, match="not a regular file"):
        keras_turbo.load(model)


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from keras_turbo.model import resolve

    w = numpy_helper.from_array(np.ones((4, 4), "float32"), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "m").mkdir()
    onnx.save_model(model, str(tmp_path / "m" / "m.onnx"), save_as_external_data=True, location="w.bin",
                    size_threshold=0)
    resolve(tmp_path / "m" / "m.onnx")  # its own file: fine
    (tmp_path / "m" / "w.bin").rename(tmp_path / "secret.bin")
    (tmp_path / "m" / "w.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ModelLoadError, match="outside"):
        resolve(tmp_path / "m" / "m.onnx")


def _png_header(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels (what a decompression bomb's header says)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_data_fifos_links_and_image_bombs(tmp_path):
    from PIL import Image

    from keras_turbo.data import load_data

    os.mkfifo(tmp_path / "x.npz")
    with pytest.raises(DataError, match="not a regular file"):
        load_data(str(tmp_path / "x.npz"))
    folder = tmp_path / "imgs"
    (folder / "a").mkdir(parents=True)
    Image.new("L", (8, 8)).save(folder / "a" / "ok.png")
    os.mkfifo(folder / "a" / "x.png")
    with pytest.raises(DataError, match="not a regular file"):
        load_data(str(folder))
    (folder / "a" / "x.png").unlink()
    Image.new("L", (8, 8)).save(tmp_path / "elsewhere.png")
    (folder / "a" / "x.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(DataError, match="outside"):
        load_data(str(folder))
    (folder / "a" / "x.png").unlink()
    (folder / "a" / "big.png").write_bytes(_png_header(9000, 9000))  # 100 bytes on disk, 81 M pixels
    t0 = time.time()
    with pytest.raises(DataError, match="9000 x 9000 pixels"):
        load_data(str(folder))
    assert time.time() - t0 < 5


def test_config_bomb_refused_before_parsing(tmp_path, model_files, monkeypatch):
    from keras_turbo.model import load_keras, resolve, scan

    monkeypatch.setattr(scan, "MAX_CONFIG_BYTES", 1 << 20)  # the real cap is 64 MiB: see benchmarks/trust.py
    src = model_files["sequential"][0]
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            if item.filename != "config.json":
                zout.writestr(item, zin.read(item))
        with zout.open("config.json", "w", force_zip64=True) as fh:
            for _ in range(3):
                fh.write(b" " * (1 << 20))
    with pytest.raises(ModelLoadError, match="model config is 3 MiB, over the 1 MiB"):
        load_keras(resolve(bomb))


def test_npz_is_memory_mapped_or_read_in_chunks(tmp_path):
    from keras_turbo.data import load_data

    x = np.arange(2 * 8 * 8, dtype="float32").reshape(2, 8, 8, 1)
    np.savez(tmp_path / "u.npz", x=x, y=np.array([0, 1]))
    np.savez_compressed(tmp_path / "c.npz", x=np.asfortranarray(x), y=np.array([0, 1]))
    u, c = load_data(str(tmp_path / "u.npz")), load_data(str(tmp_path / "c.npz"))
    assert isinstance(u.x[0], np.memmap)  # stored: mapped, not copied
    np.testing.assert_array_equal(u.x[0], x)
    np.testing.assert_array_equal(c.x[0], x)
    np.testing.assert_array_equal(c.y, [0, 1])
    np.savez(tmp_path / "p.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="pickled"):
        load_data(str(tmp_path / "p.npz"))
    # a header that claims far more than the member holds (an npz bomb) is refused unallocated
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
            fh.write(b"\0" * 64)
    with pytest.raises(DataError, match="declares shape"):
        load_data(str(tmp_path / "bomb.npz"))


# ------------------------------------------------------------------ outputs never destroy

def test_out_folder_with_user_files_is_refused_and_kept(capsys, tmp_path, digits_model):
    out = tmp_path / "project"
    (out / "best").mkdir(parents=True)
    (out / "best" / "ckpt.txt").write_text("mine")
    (out / "report.md").write_text("my notes")
    code, _, err = run_cli(capsys, "optimize", digits_model[0], "--data", "builtin:digits:test", "--out", out)
    one_line_error(code, err, "--out", "did not write", "--force")
    assert (out / "best" / "ckpt.txt").read_text() == "mine" and (out / "report.md").read_text() == "my notes"
    # --force writes beside them, but a best/ keras-turbo did not write is still never replaced
    # (and a budget too short to measure anything fails loudly, pointing at no best/)
    (out / "report.md").unlink()
    code, out_text, err = run_cli(capsys, "optimize", digits_model[0], "--data", "builtin:digits:test",
                                  "--out", out, "--force", "--time-budget", "0.001s", "--techniques", "fallback")
    assert code == 1 and "no candidate was measured" in err and "serve it" not in out_text, err
    assert (out / "best" / "ckpt.txt").read_text() == "mine"


def test_best_is_replaced_atomically_and_only_when_ours(tmp_path):
    from keras_turbo.outdir import replace_dir_atomically

    dst = tmp_path / "best"
    replace_dir_atomically(lambda d: (d / "a.txt").write_text("1"), dst)
    replace_dir_atomically(lambda d: (d / "b.txt").write_text("2"), dst)  # ours: replaced whole
    assert sorted(p.name for p in dst.iterdir()) == [".keras-turbo", "b.txt"]

    def fails(d):
        (d / "half").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        replace_dir_atomically(fails, dst)
    assert (dst / "b.txt").exists() and not (dst / "half").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["best"]  # no scratch left beside
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "x").write_text("mine")
    with pytest.raises(OutputError, match="did not write"):
        replace_dir_atomically(lambda d: None, theirs)
    assert (theirs / "x").read_text() == "mine"
    legacy = tmp_path / "legacy"  # a best/ written before markers existed: its manifest says whose it is
    legacy.mkdir()
    (legacy / "manifest.json").write_text(json.dumps({"artifact": "m.tflite", "backend": "litert", "steps": []}))
    replace_dir_atomically(lambda d: (d / "new").write_text("1"), legacy)
    assert (legacy / "new").exists()


def test_output_files_never_overwrite_inputs_or_existing_files(capsys, tmp_path, model_files):
    import shutil

    model = tmp_path / "m.keras"
    shutil.copy(model_files["sequential"][0], model)
    before = model.read_bytes()
    code, _, err = run_cli(capsys, "inspect", model, "--json", model)
    one_line_error(code, err, "--json", "overwrite the input")
    code, _, err = run_cli(capsys, "convert", model, "--to", "keras", "--quantize", "int8", "-o", model)
    one_line_error(code, err, "-o", "overwrite the input")
    code, _, err = run_cli(capsys, "convert", model, "--to", "litert", "-o", tmp_path / "a.tflite", "--json",
                           tmp_path / "a.tflite")
    assert code == 2 and "same file" in err
    assert model.read_bytes() == before
    existing = tmp_path / "r.json"
    existing.write_text("keep")
    code, _, err = run_cli(capsys, "inspect", model, "--json", existing)
    one_line_error(code, err, "exists", "--force")
    assert existing.read_text() == "keep"
    code, _, err = run_cli(capsys, "inspect", model, "--json", existing, "--force")
    assert code == 0 and json.loads(existing.read_text())["format"] == "keras"
    code, _, err = run_cli(capsys, "benchmark", model, "--json", tmp_path, "--backend", "tf-function")
    one_line_error(code, err, "is a folder")
    (tmp_path / "afile").write_text("")
    t0 = time.time()
    code, _, err = run_cli(capsys, "benchmark", model, "--json", tmp_path / "afile" / "r.json")
    one_line_error(code, err, "not a folder")
    assert time.time() - t0 < 2  # refused before any runtime was measured


# ------------------------------------------------------------------ concurrency

def test_second_run_into_one_out_is_refused(capsys, tmp_path, digits_model):
    from keras_turbo.outdir import claim_out_dir

    out = tmp_path / "run"
    with claim_out_dir(out):
        with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
            with claim_out_dir(out):
                pass
        code, _, err = run_cli(capsys, "optimize", digits_model[0], "--data", "builtin:digits:test", "--out", out)
        one_line_error(code, err, "in use by another keras-turbo run", f"pid {os.getpid()}")
    with claim_out_dir(out):  # released: the next run gets it (the folder is keras-turbo's now)
        pass


def test_two_processes_on_one_cold_cache(tmp_path, model_files):
    """Both build at once: one builds each artifact, the other waits and reuses it; both right."""
    cache = tmp_path / "cache"
    code = ("import sys, numpy as np, keras_turbo\n"
            "from keras_turbo.convert import ConvertConfig, convert\n"
            f"m = {str(model_files['sequential'][0])!r}\n"
            "x = np.random.default_rng(0).random((2, 12, 12, 3), dtype='float32')\n"
            "r = convert(m, ConvertConfig(to='onnx', quantize='dynamic'))\n"
            "o = keras_turbo.load(m, backend='onnxruntime')(x)\n"
            "print(r.path, float(np.abs(keras_turbo.load(m, backend='tf-function')(x) - o).max()))\n")
    env = dict(os.environ, KERAS_TURBO_CACHE=str(cache), PYTHONPATH=SRC)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-800:] for _, e in outs]
    paths = {o.split()[0] for o, _ in outs}
    assert len(paths) == 1 and all(float(o.split()[1]) < 1e-4 for o, _ in outs)
    leftovers = [p for p in cache.rglob(".*") if p.is_dir()]
    assert not leftovers, leftovers  # no scratch folders


def test_damaged_cache_entry_is_rebuilt(tmp_path, model_files):
    from keras_turbo import exporters
    from keras_turbo.model import resolve

    ref = resolve(model_files["sequential"][0])
    art = exporters.export(ref, "tflite", tmp_path)
    good = art.path.read_bytes()
    stale = art.path.parent.parent / ".tflite.build-killed"  # a scratch folder a SIGKILLed run left
    stale.mkdir()
    art.path.write_bytes(good[: len(good) // 2])  # truncated, as a killed copy would leave it
    again = exporters.export(ref, "tflite", tmp_path)
    assert again.path == art.path and again.path.read_bytes() == good
    assert not stale.exists()  # cleared by the next build of that entry


# ------------------------------------------------------------------ interruption

def _cmdline(proc) -> str:
    import psutil

    try:
        return " ".join(proc.cmdline())
    except psutil.Error:  # gone, or a zombie, meanwhile
        return ""


def test_worker_killed_by_a_signal_is_reported_for_retry():
    from keras_turbo.timing import BenchmarkConfig
    from keras_turbo.bench import run_isolated

    cfg = BenchmarkConfig(min_seconds=60, min_runs=1, warmup_seconds=0, warmup_runs=0)
    job = {"backend": "null", "batch_size": 1, "threads": 1, "config": cfg.to_dict()}
    import psutil

    me = psutil.Process()

    def kill_worker():
        for _ in range(400):
            kids = [k for k in me.children() if "keras_turbo.bench" in _cmdline(k)]
            if kids:
                time.sleep(1.0)
                kids[0].send_signal(signal.SIGKILL)
                return
            time.sleep(0.05)

    t = threading.Thread(target=kill_worker)
    t.start()
    res = run_isolated(job, 120)
    t.join()
    assert res["ok"] is False and res["signal"] == signal.SIGKILL and "retried" in res["error"]


def test_optimize_retries_a_row_whose_worker_was_killed(tmp_path, digits_model, monkeypatch):
    from keras_turbo import bench
    from keras_turbo.optimize import OptimizeConfig, optimize

    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("fallback",), min_runs=5, min_seconds=0.05, eval_size=100,
                         runoff_rounds=0)
    real = bench.run_isolated

    def killed(job, timeout_s):
        if job["backend"] == "null":
            return real(job, timeout_s)
        return {"ok": False, "signal": 9, "error": "worker killed by SIGKILL (out of memory?); retried on the next run"}

    monkeypatch.setattr(bench, "run_isolated", killed)
    first = optimize(digits_model[0], "builtin:digits:test", None, cfg, tmp_path / "o")
    assert [v.get("retry") for v in first.variants] == [True] and first.recommended is None
    monkeypatch.setattr(bench, "run_isolated", real)
    second = optimize(digits_model[0], "builtin:digits:test", None, cfg, tmp_path / "o")
    assert second.variants[0]["ok"] and second.recommended is not None


def _spawn(args, **kw):
    env = dict(os.environ, PYTHONPATH=SRC, **kw.pop("env", {}))
    return subprocess.Popen([sys.executable, "-m", "keras_turbo.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def _wait_for_cpu(p, seconds: float) -> None:
    """Until the process has run `seconds` of CPU time (or ended): "0.15 s into its start" in a
    measure the machine's load does not stretch. On a loaded machine (the suite's other worker)
    0.15 s of wall time can end before the interpreter has compiled the CLI's first line, where no
    program can answer a signal yet."""
    tick = os.sysconf("SC_CLK_TCK")
    while p.poll() is None:
        try:
            fields = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return
        if (int(fields[11]) + int(fields[12])) / tick >= seconds:  # utime + stime
            return
        time.sleep(0.005)


@pytest.mark.parametrize("delay", [0.15, 0.4, 1.0])
def test_ctrl_c_at_start_is_one_line_and_130(model_files, delay):
    p = _spawn(["inspect", model_files["sequential"][0]])
    _wait_for_cpu(p, delay)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert err.strip() == "keras-turbo: interrupted", err


def test_ctrl_c_that_a_library_turns_into_an_error_is_still_an_interrupt(monkeypatch, capsys):
    """numpy's import wraps a KeyboardInterrupt raised while its C extension loads in an
    ImportError; the user pressed Ctrl-C, so the CLI must not call it an internal error."""
    from keras_turbo import cli

    def interrupted_import(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt as e:
            raise ImportError("IMPORTANT: PLEASE READ THIS FOR ADVICE ON HOW TO SOLVE THIS ISSUE!") from e

    monkeypatch.setattr(cli, "cmd_inspect", interrupted_import)
    assert cli.main(["inspect", "x.keras"]) == 130
    assert capsys.readouterr().err.strip() == "keras-turbo: interrupted"


def test_sigterm_leaves_no_worker_and_no_temp_folder(tmp_path, model_files):
    import psutil

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p = _spawn(["benchmark", model_files["sequential"][0], "--backend", "keras-call", "--min-seconds", "120"],
               env={"TMPDIR": str(tmp)})
    worker = None
    deadline = time.time() + 120
    while time.time() < deadline and worker is None:
        kids = [k for k in psutil.Process(p.pid).children(recursive=True) if "keras_turbo.bench" in _cmdline(k)]
        # the second worker (the first measures the harness overhead in a fraction of a second)
        if kids and "kt-bench-" in _cmdline(kids[0]) and list(tmp.glob("kt-bench-*/job.json")):
            job = json.loads(next(tmp.glob("kt-bench-*/job.json")).read_text())
            if job["backend"] == "keras-call":
                worker = kids[0]
        time.sleep(0.2)
    assert worker is not None
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM and err.strip() == "keras-turbo: stopped by SIGTERM", err
    worker.wait(timeout=10) if worker.is_running() else None
    assert not psutil.pid_exists(worker.pid) or worker.status() == psutil.STATUS_ZOMBIE
    assert not list(tmp.iterdir())


def test_worker_dies_with_a_killed_parent(tmp_path, model_files):
    """SIGKILL gives the parent no chance to clean up: the parent-death signal kills the worker."""
    import psutil

    p = _spawn(["benchmark", model_files["sequential"][0], "--backend", "keras-call", "--min-seconds", "120"])
    deadline, worker = time.time() + 120, None
    while time.time() < deadline and worker is None:
        kids = [k for k in psutil.Process(p.pid).children() if "keras_turbo.bench" in _cmdline(k)]
        if kids and time.time() > deadline - 115:
            worker = kids[0]
        time.sleep(0.2)
    import tempfile

    from keras_turbo.bench import _remove_orphaned_job_folders

    left = list(Path(tempfile.gettempdir()).glob(f"kt-bench-{p.pid}-*"))
    assert left  # the parent's job folder, while it runs
    p.kill()
    p.wait()
    try:
        worker.wait(timeout=10)
    except psutil.NoSuchProcess:
        pass
    assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    # Nothing runs after SIGKILL: the next benchmark removes the folder (here, or one a parallel
    # test worker starts first: the folder's process is gone either way).
    _remove_orphaned_job_folders()
    assert not any(f.exists() for f in left)


# ------------------------------------------------------------------ input sanity

def test_uint8_images_into_a_unit_range_model_warn(capsys, tmp_path, digits_model):
    from keras_turbo.data import load_digits
    from keras_turbo.builtin import DIGITS_INPUT
    from keras_turbo.model.signature import TensorInfo

    ds = load_digits([TensorInfo("image", (None, *DIGITS_INPUT), "float32")], "test")
    x = (ds.x[0] * 255).round().astype("uint8")
    np.savez(tmp_path / "u8.npz", x=x, y=ds.y)
    code, out, err = run_cli(capsys, "evaluate", digits_model[0], "--data", tmp_path / "u8.npz", "--backend", "keras-call")
    assert code == 0
    warns = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warns) == 1 and "divide the data by 255" in warns[0] and "uint8" in warns[0], err
    np.savez(tmp_path / "f.npz", x=ds.x[0], y=ds.y)  # already in [0, 1]: quiet
    code, out, err = run_cli(capsys, "evaluate", digits_model[0], "--data", tmp_path / "f.npz", "--backend", "keras-call")
    assert code == 0 and "warning" not in err


def test_inspect_openvino_ir(capsys, openvino_ir):
    code, out, err = run_cli(capsys, "inspect", openvino_ir)
    assert code == 0, err
    assert "Convolution" in out


def test_tflite_custom_op_is_one_line(capsys, tmp_path):
    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)], autograph=False)
    def f(x):
        return tf.raw_ops.Igamma(a=x, x=x)

    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    conv.allow_custom_ops = True
    with _tf.quiet():
        (tmp_path / "c.tflite").write_bytes(conv.convert())
    code, _, err = run_cli(capsys, "inspect", tmp_path / "c.tflite")
    one_line_error(code, err, "custom op Igamma")


def test_data_outside_the_calibrated_range_warns(tmp_path, model_files):
    """An int8-I/O model represents only the input range calibration saw: 0-255 data into a
    model calibrated on [0, 1] is clipped, and evaluate says so in one line."""
    import warnings

    import keras_turbo
    from keras_turbo.convert import ConvertConfig, convert
    from keras_turbo.data import Dataset

    rng = np.random.default_rng(0)
    unit = rng.random((120, 12, 12, 3), dtype="float32")
    r = convert(model_files["sequential"][0], ConvertConfig(to="litert", quantize="int8", int8_io=True,
                                                             calibration_size=100), Dataset((unit,), None, "calib"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keras_turbo.evaluate(r.path, Dataset((unit[:20],), None, "unit"))
        assert not [w for w in caught if "calibrated" in str(w.message)]
        keras_turbo.evaluate(r.path, Dataset((unit[:20] * 255,), None, "bytes"))
    msgs = [str(w.message) for w in caught if "calibrated" in str(w.message)]
    assert len(msgs) == 1 and "scale the data as in calibration" in msgs[0], msgs


# ------------------------------------------------------------------ issue 30: links planted in an output folder

def _victim(tmp_path) -> Path:
    v = tmp_path / "victim.txt"
    v.write_text("the user's own file\n")
    return v


def _assert_untouched(victim: Path) -> None:
    assert victim.read_text() == "the user's own file\n", "a write followed a planted link"


@pytest.mark.parametrize("planted", [".keras-turbo.lock", ".keras-turbo", "results.json", "report.md", "report.html",
                                     "best", "artifacts/abc", "reference"])
def test_optimize_refuses_a_folder_with_a_link_where_it_writes(capsys, tmp_path, digits_model, planted):
    """A folder prepared with a link where keras-turbo writes is refused before anything is written,
    --force or not, and the link's target is never touched."""
    victim = _victim(tmp_path)
    out = tmp_path / "o"
    (out / planted).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(victim, out / planted)
    if planted != ".keras-turbo":
        (out / ".keras-turbo").write_text('{"written_by": "keras-turbo", "kind": "run"}\n')
    for extra in ([], ["--force"]):
        code, _, err = run_cli(capsys, "optimize", digits_model[0], "--data", "builtin:digits:test", "--out", out,
                               "--techniques", "runtimes", "--runtimes", "litert", *extra)
        one_line_error(code, err, "symbolic link")
        _assert_untouched(victim)


def test_report_and_file_outputs_replace_a_link_never_its_target(capsys, tmp_path, model_files, digits_model):
    """`keras-turbo report DIR`, --json and -o write under a fresh name and rename it into place: a
    link at the output path is replaced, its target left as it was."""
    victim = _victim(tmp_path)
    src = Path(__file__).parent / "data" / "results_before_issue27.json"
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(src.read_text())
    (run / ".keras-turbo").write_text('{"written_by": "keras-turbo", "kind": "run"}\n')
    for name in ("report.md", "report.html"):
        os.symlink(victim, run / name)
    code, _, err = run_cli(capsys, "report", run)
    assert code == 0, err
    _assert_untouched(victim)
    assert all((run / n).is_file() and not (run / n).is_symlink() for n in ("report.md", "report.html"))
    # -o and --json with --force (the user's path exists: a link to the victim)
    path = model_files["sequential"][0]
    for argv in (["convert", path, "--to", "litert", "-o", tmp_path / "m.tflite"],
                 ["inspect", path, "--json", tmp_path / "i.json"],
                 ["benchmark", path, "--backend", "litert", "--min-runs", "3", "--min-seconds", "0.01",
                  "--json", tmp_path / "b.json"]):
        link = Path(argv[argv.index("-o") + 1] if "-o" in argv else argv[argv.index("--json") + 1])
        os.symlink(victim, link)
        code, _, err = run_cli(capsys, *argv, "--force")
        assert code == 0, err
        _assert_untouched(victim)
        assert link.is_file() and not link.is_symlink()


def test_a_linked_results_json_is_never_read(tmp_path):
    from keras_turbo.optimize.store import Store

    other = tmp_path / "someone_elses.json"
    other.write_text(json.dumps({"format": 2, "model_fingerprint": "fp", "variants": [], "measurements": []}))
    (tmp_path / "o").mkdir()
    os.symlink(other, tmp_path / "o" / "results.json")
    store = Store(tmp_path / "o", "fp")
    assert "symbolic link" in store.note and not store.measurements


# ------------------------------------------------------------------ issue 30: corrupt inputs, impossible paths

RANDOM = np.random.default_rng(30).bytes(4096)


@pytest.mark.parametrize("name", ["m.keras", "m.h5", "m.hdf5", "m.tflite", "m.onnx", "m.xml", "saved_model"])
def test_random_bytes_in_every_model_format_are_one_line(capsys, tmp_path, name):
    path = tmp_path / name
    if name == "saved_model":
        path.mkdir()
        (path / "saved_model.pb").write_bytes(RANDOM)
    else:
        path.write_bytes(RANDOM)
        if name == "m.xml":
            path.with_suffix(".bin").write_bytes(RANDOM)
    one_line_error(*run_cli(capsys, "inspect", path)[::2], str(path.name))
    # a text file in a model's clothes too
    if name in ("m.onnx", "m.tflite", "m.keras"):
        path.write_text("not a model at all\n" * 20)
        one_line_error(*run_cli(capsys, "inspect", path)[::2], str(path.name))


@pytest.mark.parametrize("name", ["d.npz", "d.txt", "images"])
def test_random_bytes_in_every_data_format_are_one_line(capsys, tmp_path, model_files, name):
    path = tmp_path / name
    if name == "images":
        (path / "cat").mkdir(parents=True)
        for i in range(3):
            (path / "cat" / f"{i}.png").write_bytes(RANDOM)
    else:
        path.write_bytes(RANDOM)
    code, _, err = run_cli(capsys, "evaluate", model_files["sequential"][0], "--data", path, "--backend", "keras-call")
    one_line_error(code, err)


def test_random_bytes_as_results_json_are_one_line(capsys, tmp_path):
    (tmp_path / "results.json").write_bytes(RANDOM)
    one_line_error(*run_cli(capsys, "report", tmp_path)[::2])


def test_output_paths_the_system_cannot_create_are_one_line(capsys, digits_model, model_files):
    t0 = time.time()
    code, _, err = run_cli(capsys, "optimize", digits_model[0], "--data", "builtin:digits:test", "--out", "/proc/kt-out")
    one_line_error(code, err, "/proc/kt-out")
    code, _, err = run_cli(capsys, "inspect", model_files["sequential"][0], "--json", "/proc/kt/i.json")
    one_line_error(code, err, "/proc/kt/i.json")
    assert time.time() - t0 < 30  # refused before any work


def test_a_metric_that_raises_stops_the_run_before_any_build(capsys, tmp_path, digits_model):
    (tmp_path / "metric.py").write_text("def broken(ref, out, y):\n    raise ValueError('no such column')\n")
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "optimize", digits_model[0], "--data", "builtin:digits:test", "--out", out,
                           "--metric", f"{tmp_path / 'metric.py'}:broken", "--techniques", "runtimes", "--runtimes", "litert")
    one_line_error(code, err, "metric.py:broken", "ValueError: no such column")
    assert not any((out / "artifacts").iterdir()) if (out / "artifacts").exists() else True
