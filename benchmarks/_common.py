"""Helpers shared by the benchmark scripts: where they work, and how they update BENCHMARKS.md."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the reference models live with the tests (tests/reference_models.py)
    sys.path.insert(0, str(ROOT))
WORK = ROOT / "benchmarks" / ".work"          # models and caches (git-ignored)
RESULTS = ROOT / "benchmarks" / "results"     # raw JSON behind every table (committed)
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"

HEADER = """# keras-turbo benchmarks

Every table here is written by a script in `benchmarks/`; the raw measurements behind it are in
`benchmarks/results/`. Speed is compared as ratios within one run: these are shared 2-core
machines and an absolute time is only a hint.
"""


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between `<!-- name:begin -->` and `<!-- name:end -->`."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    block = f"<!-- {name}:begin -->\n{body.rstrip()}\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(name)}:begin -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)


def rendered_again(argv, section: str, raw_path: Path, render) -> bool:
    """`--render` in argv: the section written again from the script's saved JSON (True), with
    nothing measured; False otherwise."""
    if "--render" not in argv:
        return False
    import json

    write_section(section, render(json.loads(raw_path.read_text())))
    return True


def publish(section: str, raw_path: Path, raw: dict, render) -> None:
    """A script's measurements to benchmarks/results/ and its section of BENCHMARKS.md."""
    import json

    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(raw, indent=2, default=str))
    write_section(section, render(raw))


#: photos of the shared ImageNet set optimize sets apart for calibration (OptimizeConfig.calibration_size)
IMAGENET_CALIBRATION = 300


def imagenet_split():
    """(x, y, calibration indices, judged indices) of the 1,300 shared ImageNet photos, split as
    `benchmarks/trained.py` and optimize split them (`optimize.measure.DataRef`): the first 300
    of a seed-0 permutation calibrate (or are the unlabelled train data), the rest are judged."""
    import numpy as np

    from tests.reference_models import imagenet_photos

    x, y, _ = imagenet_photos()
    perm = np.random.default_rng(0).permutation(len(x))
    return x, y, perm[:IMAGENET_CALIBRATION], perm[IMAGENET_CALIBRATION:]


def imagenet_model(key: str):
    """A shared ImageNet-trained model ("mobilenet_v2_1.0", "mobilenet_v1_0.75") as keras-turbo loads it."""
    from keras_turbo.model import as_ref, load_keras
    from tests.reference_models import IMAGENET_MODELS, SHARED_IMAGENET

    return load_keras(as_ref(SHARED_IMAGENET / "models" / IMAGENET_MODELS[key]))


def app_model_file(arch: str) -> Path:
    """A keras.applications architecture at 224x224x3 with random weights, saved once in WORK."""
    from tests.reference_models import application

    path = WORK / f"{arch}_224.keras"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        application(arch).save(path)
    return path


def machine_line(machine: dict) -> str:
    flags = ", ".join(k for k, v in machine["cpu_flags"].items() if v)
    libs = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items() if v)
    gpus = "; ".join(machine["gpus"]) or "no GPU"
    return f"{machine['cpu']}, {machine['usable_cores']} cores ({flags}); {gpus}; {libs}"


def cpu_kind(machine: dict) -> str:
    """A CPU in a few words, by the features that decide which precisions it runs fast: "Intel Xeon,
    AMX", "AMD EPYC, AVX-512 VNNI + BF16, no AMX", "AVX2 only"."""
    f = {k for k, v in machine.get("cpu_flags", {}).items() if v}
    name = " ".join(w for w in machine.get("cpu", "?").replace("(R)", "").split() if w not in ("Processor", "CPU"))
    name = " ".join(name.split()[:3])
    if "amx_int8" in f or "amx_bf16" in f:
        return f"{name}, AMX"
    vec = [n for n, flag in (("VNNI", "avx512_vnni"), ("BF16", "avx512_bf16"), ("FP16", "avx512_fp16")) if flag in f]
    if vec:
        return f"{name}, AVX-512 {' + '.join(vec)}, no AMX"
    return f"{name}, {'AVX2 only' if 'avx2' in f else 'no AVX2'}"


def natural_images(n: int, size: int, seed: int = 0, labels: bool = False):
    """n crops (0..255 float32, HWC) of scikit-learn's two bundled sample photos, nearest-neighbour
    resized to size x size, half of them mirrored. Returns (images, what they are), and with
    `labels` each crop's class of PROBE_CLASSES: which photo, and which cell of a 3x3 grid over it
    holds the crop's centre (mirroring is a crop-local change: it keeps the cell)."""
    import numpy as np
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [np.asarray(im, "float32") for im in load_sample_images().images]
    out, cls = [], []
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(size, min(photo.shape[:2]) + 1))
        y, x = (int(rng.integers(0, d - side + 1)) for d in photo.shape[:2])
        idx = (np.arange(size) * side / size).astype(int)
        crop = photo[y:y + side, x:x + side][idx][:, idx]
        out.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
        row, col = (min(2, int(3 * (o + side / 2) / d)) for o, d in zip((y, x), photo.shape[:2]))
        cls.append((i % len(photos)) * 9 + row * 3 + col)
    what = "crops of scikit-learn's sample photos (china.jpg, flower.jpg)"
    return (np.stack(out), what, np.asarray(cls)) if labels else (np.stack(out), what)


#: the task the reference models' classifiers are fitted to (see calibrated_app_file)
PROBE_CLASSES = 18
PROBE_IMAGES = 720


#: keras.applications architectures at 224x224x3 and the preprocessing each expects of 0..255 images
APPS = {"mobilenetv2": ("MobileNetV2", "mobilenet_v2"), "resnet50": ("ResNet50", "resnet50"),
        "efficientnetv2b0": ("EfficientNetV2B0", "efficientnet_v2")}


def calibrated_app_file(arch: str, images) -> Path:
    """A weights=None keras.applications model (224x224x3) made to behave like a trained one, saved
    once in WORK:

    - its BatchNorm moving statistics are set from one training-mode pass over `images` (0..255,
      preprocessed here): with keras' 0/1 initial statistics every input gives nearly the same
      output, and top-1 agreement between variants would test nothing;
    - its classifier (PROBE_CLASSES outputs, softmax) is fitted as a linear probe (multinomial
      logistic regression on the pooled features of PROBE_IMAGES other crops, labelled by
      natural_images): a random 1000-way head leaves the top classes nearly tied, so that any
      rounding flips a tenth of the top-1s, which no trained classifier's margins do.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from keras_turbo import _tf

    path = WORK / f"{arch}_224_probe.keras"
    if path.exists():
        return path
    keras = _tf.keras()
    cls = APPS[arch][0]
    keras.utils.set_random_seed(0)
    # EfficientNetV2's built-in preprocessing holds a Normalization layer, which exports to ONNX as
    # two extra graph inputs (STACK.md): it is left out and done in app_preprocess, as for the others.
    extra = {"include_preprocessing": False} if arch == "efficientnetv2b0" else {}
    model = getattr(keras.applications, cls)(weights=None, input_shape=(224, 224, 3), classes=PROBE_CLASSES, **extra)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0  # moving statistics := this batch's statistics
    model(app_preprocess(arch, images), training=True)
    for layer in bns:
        layer.momentum = 0.99
    probe, _, y = natural_images(PROBE_IMAGES, 224, seed=2, labels=True)
    head = model.layers[-1]
    feats = keras.Model(model.inputs, head.input).predict(app_preprocess(arch, probe), batch_size=32, verbose=0)
    scaler = StandardScaler().fit(feats)
    clf = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(feats), y)
    kernel = np.zeros((feats.shape[1], PROBE_CLASSES), "float32")
    bias = np.full(PROBE_CLASSES, -30.0, "float32")  # a class no probe crop had is never predicted
    kernel[:, clf.classes_] = clf.coef_.T / scaler.scale_[:, None]
    bias[clf.classes_] = clf.intercept_ - (scaler.mean_ / scaler.scale_) @ clf.coef_.T
    head.set_weights([kernel, bias])
    WORK.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def app_preprocess(arch: str, images):
    """`images` (0..255) as the architecture's own preprocess_input makes them."""
    import numpy as np

    from keras_turbo import _tf

    if arch == "efficientnetv2b0":  # what its include_preprocessing layers do: [0, 1], then ImageNet mean / std
        mean, std = np.array([0.485, 0.456, 0.406], "float32"), np.array([0.229, 0.224, 0.225], "float32")
        return ((images / 255.0 - mean) / std).astype("float32")
    return np.asarray(getattr(_tf.keras().applications, APPS[arch][1]).preprocess_input(images.copy()), "float32")
