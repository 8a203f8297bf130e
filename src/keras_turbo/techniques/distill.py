"""Knowledge distillation: train a lighter student to copy a trained teacher.

The student is one of:
  - "width:F" (default "width:0.5"): the teacher's own architecture, rebuilt from its config
    with every Conv/Dense layer's filters/units times F (at least 1), except the output layer,
    which keeps the teacher's classes. FLOPs of a conv scale with in x out channels, so F=0.5
    costs about a quarter (a little more: the first conv's input and the head do not shrink);
  - "mobilenet[:alpha]", "mobilenetv2[:alpha]", "mobilenetv3small[:alpha]", "efficientnetb0":
    a keras.applications architecture with `weights=None` (nothing is downloaded) at the
    teacher's input shape and class count;
  - a path to a `.keras` / `.h5` model whose output shape matches the teacher's.

The loss (Hinton et al., 2015; the one `_training.distillation_loss` every technique shares):
T^2 x KL(softmax(teacher / T) || softmax(student / T)) on temperature-softened logits, plus
`alpha` x cross-entropy on the hard labels when there are labels; the T^2 keeps the soft term's gradients the same size whatever T is. Without labels the
soft term alone trains the student. Outputs that are already probabilities (a softmax head) are
turned back into logits with log(p), which is a logit up to a per-row constant that softmax
ignores.

Augmentation (`shift`, `mixup`) follows "Knowledge distillation: a good teacher is patient and
consistent" (Beyer et al., 2022): the teacher and the student see the *same* augmented batch, so
the teacher labels every new image it makes, where a hard label can only guess (a mixup of a 3
and an 8 is not 0.6 of a 3). The labels-only baseline sees the very same batches (the augmentation
is drawn from the seed, the epoch and the step, nothing else) with the labels mixed alongside,
so the comparison isolates the teacher. Without augmentation the teacher runs once, in inference
mode, before training starts: its outputs on fixed inputs do not change, so there is no reason to
pay for it every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_turbo import _tf
from keras_turbo.data import Dataset
from keras_turbo.describe import describe_keras
from keras_turbo.errors import KerasTurboError, bad_param, cause, first_line
from keras_turbo.model import load_keras, resolve
from keras_turbo.techniques._training import (
    accuracy,
    check_model,
    check_training,
    distillation_loss,
    feed,
    is_number,
    logits_view,
    looks_like_probabilities,
    predict,
)
from keras_turbo.techniques.base import TechniqueConfig, TechniqueResult

APPLICATIONS = ("mobilenet", "mobilenetv2", "mobilenetv3small", "efficientnetb0")
WIDTH_SCALED = ("Conv1D", "Conv2D", "Conv3D", "SeparableConv1D", "SeparableConv2D", "Conv2DTranspose", "Dense")
STUDENT_HELP = ('"width:F" (0 < F <= 1), "mobilenet[:alpha]", "mobilenetv2[:alpha]", "mobilenetv3small[:alpha]", '
                '"efficientnetb0", or a path to a .keras/.h5 model')


def parse_student(spec: str) -> tuple[str, float | None]:
    """"width:0.5" -> ("width", 0.5); "mobilenetv2:0.35" -> ("mobilenetv2", 0.35);
    "efficientnetb0" -> ("efficientnetb0", None); a model path -> ("path", None)."""
    if not isinstance(spec, str) or not spec:
        raise bad_param("student", STUDENT_HELP, spec)
    if spec.endswith((".keras", ".h5", ".hdf5")) or "/" in spec or Path(spec).exists():
        return "path", None
    name, _, arg = spec.partition(":")
    if name not in ("width", *APPLICATIONS):
        raise bad_param("student", STUDENT_HELP, spec)
    if not arg:
        if name == "width":
            raise bad_param("student", STUDENT_HELP, spec)
        return name, None
    if name == "efficientnetb0":
        raise bad_param("student", f"{STUDENT_HELP} (efficientnetb0 takes no width)", spec)
    try:
        f = float(arg)
    except ValueError:
        raise bad_param("student", STUDENT_HELP, spec) from None
    if not 0 < f <= (1.0 if name == "width" else 1.4):
        raise bad_param("student", STUDENT_HELP, spec)
    return name, f


@dataclass(frozen=True)
class DistillConfig(TechniqueConfig):
    """How to distill.

    Attributes:
        student: which student to train (see the module docstring): "width:0.5" by default.
        temperature: T, > 0; softens both outputs so the student learns the teacher's ranking
            of the wrong classes too (the "dark knowledge"), not only its top class.
        alpha: weight of the hard-label cross-entropy, in [0, 1]: the one distillation loss
            (`_training.distillation_loss`) is trained with soft_weight 1 and hard_weight `alpha`,
            i.e. T^2 x KL + alpha x cross-entropy. Ignored when the train data has no labels.
            (The fine-tuning of prune / structured weighs the same two terms as `distill_weight`
            and 1 - `distill_weight` instead.)
        labels_only: train the same student on the labels alone, with no teacher (the baseline
            that distillation has to beat; needs labels).
        shift: random translation of image inputs (batch, height, width, channels) by up to this
            fraction of the height and width, edges repeated; 0 turns it off.
        mixup: the Beta(a, a) parameter of mixup between pairs in a batch (0.2 to 1 are the usual
            values); 0 turns it off. Labels are mixed alongside for the hard-label term.
        epochs / batch_size / learning_rate: the training (Adam, cosine decay to zero).
        seed: seeds Keras' random state (the student's initial weights) and the batch order and
            augmentation.

    Raises:
        KerasTurboError: a setting out of range or an unknown student name.

    Example:
        >>> DistillConfig(student="width:0.4", temperature=4.0, alpha=0.1, epochs=30)
    """

    student: str = "width:0.5"
    # T=2 with the labels at half weight was the best of T 1/2/4 x alpha 0.1/0.5 on the digits
    # validation split (benchmarks/training.py); T=4, alpha=0.1 was the worst there.
    temperature: float = 2.0
    alpha: float = 0.5
    labels_only: bool = False
    shift: float = 0.0
    mixup: float = 0.0
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3
    seed: int = 0

    def __post_init__(self):
        parse_student(self.student)
        if not is_number(self.temperature) or not self.temperature > 0:
            raise bad_param("temperature", "a number > 0", self.temperature)
        if not is_number(self.alpha) or not 0.0 <= self.alpha <= 1.0:
            raise bad_param("alpha", "a float in [0, 1]", self.alpha)
        if not is_number(self.shift) or not 0.0 <= self.shift < 0.5:
            raise bad_param("shift", "a fraction of the image size in [0, 0.5)", self.shift)
        if not is_number(self.mixup) or self.mixup < 0:
            raise bad_param("mixup", "a number >= 0 (0 turns mixup off)", self.mixup)
        if not isinstance(self.labels_only, bool):
            raise bad_param("labels_only", "True or False", self.labels_only)
        check_training(self.epochs, self.batch_size, self.learning_rate)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise bad_param("seed", "an integer", self.seed)


# ------------------------------------------------------------------ students

def width_scaled(teacher, factor: float):
    """The teacher's architecture with every Conv/Dense width times `factor` (not the output
    layers), freshly initialised. Rebuilt from the config so that everything downstream (BatchNorm,
    depthwise convs, pooling) takes its new channel count from its input, as Keras builds it."""
    keras = _tf.keras()
    cfg = teacher.get_config()
    layers = cfg.get("layers")
    if not isinstance(layers, list):
        raise KerasTurboError(f"student width:{factor}: model {teacher.name!r} is not a functional or Sequential model")
    if isinstance(teacher, keras.Sequential):
        outputs = {layers[-1]["config"]["name"]}
    else:
        outs = cfg["output_layers"]
        outs = [outs] if outs and isinstance(outs[0], str) else outs
        outputs = {o[0] for o in outs}
    scaled = []
    for layer in layers:
        # The saved build shapes are the teacher's: drop them so each layer builds on its new input.
        layer.pop("build_config", None)
        c = layer["config"]
        if layer["class_name"] in WIDTH_SCALED and c.get("name") not in outputs:
            key = "filters" if "filters" in c else "units"
            c[key] = max(1, int(round(c[key] * factor)))
            scaled.append(c["name"])
    try:
        student = type(teacher).from_config(cfg) if isinstance(teacher, keras.Sequential) else keras.Model.from_config(cfg)
    except Exception as e:  # e.g. a residual Add whose branches no longer agree on channels
        raise KerasTurboError(f"student width:{factor}: the scaled copy of {teacher.name!r} cannot be built "
                              f"({cause(e)}); pick another --student") from e
    student.name = f"{teacher.name}_width{factor:g}"
    return student, scaled


def application_student(name: str, alpha: float | None, teacher, probs: bool):
    """A keras.applications network (weights=None) at the teacher's input shape and classes."""
    keras = _tf.keras()
    A = keras.applications
    makers = {"mobilenet": A.MobileNet, "mobilenetv2": A.MobileNetV2, "mobilenetv3small": A.MobileNetV3Small,
              "efficientnetb0": A.EfficientNetB0}
    if len(teacher.inputs) != 1 or len(teacher.inputs[0].shape) != 4:
        raise KerasTurboError(f"student {name}: needs a teacher with one image input (height, width, channels); "
                              f"{teacher.name!r} takes {[tuple(i.shape) for i in teacher.inputs]}")
    shape = tuple(teacher.inputs[0].shape[1:])
    classes = int(teacher.outputs[0].shape[-1])
    kwargs = {"alpha": alpha} if alpha is not None else {}
    if name == "mobilenetv3small":
        # Its built-in rescaling expects [0, 255] pixels; our data is in [0, 1] as the teacher's.
        kwargs["include_preprocessing"] = False
    try:
        return makers[name](weights=None, input_shape=shape, classes=classes,
                            classifier_activation="softmax" if probs else None, **kwargs)
    except Exception as e:  # keras.applications checks sizes (e.g. MobileNet needs >= 32x32)
        raise KerasTurboError(f"student {name}: cannot be built at input {shape} with {classes} classes "
                              f"({first_line(e)}); try --student width:0.5") from e


def make_student(teacher, spec: str, probs: bool):
    """(student model, description) for a `student` spec."""
    kind, arg = parse_student(spec)
    if kind == "width":
        student, scaled = width_scaled(teacher, arg)
        return student, f"width-scaled copy of {teacher.name} (x{arg:g} on {', '.join(scaled) or 'nothing'})"
    if kind == "path":
        return load_keras(resolve(spec)), f"user model {spec}"
    return application_student(kind, arg, teacher, probs), f"keras.applications {kind}" + (f" alpha {arg}" if arg else "") + " (weights=None)"


# ------------------------------------------------------------------ the loss

def loss_weights(config: DistillConfig, labels: bool) -> tuple[float, float]:
    """`apply`'s (soft_weight, hard_weight) of `_training.distillation_loss`: the soft term at
    weight 1 and `alpha` of cross-entropy on the labels; the soft term alone without labels."""
    return 1.0, (config.alpha if labels else 0.0)


# ------------------------------------------------------------------ batches

def shift_images(a: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Each image of a (batch, height, width, channels) array moved by a random whole number of
    pixels, up to `fraction` of its height / width each way, the edge pixels repeated into the gap."""
    dy, dx = (max(1, int(round(fraction * a.shape[i]))) for i in (1, 2))
    padded = np.pad(a, ((0, 0), (dy, dy), (dx, dx), (0, 0)), mode="edge")
    oy, ox = rng.integers(0, 2 * dy + 1, len(a)), rng.integers(0, 2 * dx + 1, len(a))
    h, w = a.shape[1:3]
    return np.stack([padded[i, oy[i]:oy[i] + h, ox[i]:ox[i] + w] for i in range(len(a))])


def batches(keras, x, targets, config: DistillConfig, feed):
    """A keras PyDataset of `config.epochs` epochs of (inputs, targets(batch inputs, index, mix))
    batches, as one long epoch. Everything random is drawn from (seed, epoch, step), so the
    distilled and the labels-only student train on identical batches."""
    n, bs = len(x[0]), config.batch_size
    steps = math.ceil(n / bs)

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)

        def __len__(self):
            return config.epochs * steps

        def __getitem__(self, i):
            epoch, step = divmod(int(i), steps)
            idx = np.random.default_rng([config.seed, epoch]).permutation(n)[step * bs:(step + 1) * bs]
            rng = np.random.default_rng([config.seed, epoch, step, 1])
            xb = [a[idx] for a in x]
            if config.shift:
                xb = [shift_images(a, rng, config.shift) if a.ndim == 4 else a for a in xb]
            mix = None
            if config.mixup:
                lam, partner = rng.beta(config.mixup, config.mixup, len(idx)).astype("float32"), rng.permutation(len(idx))
                mix = (lam, partner)
                xb = [(lam.reshape((-1,) + (1,) * (a.ndim - 1)) * a + (1 - lam.reshape((-1,) + (1,) * (a.ndim - 1))) * a[partner]).astype(a.dtype)
                      if np.issubdtype(a.dtype, np.floating) else a for a in xb]
            return feed(tuple(xb)), targets(tuple(xb), idx, mix)

    return Batches()


def _mix(y: np.ndarray, mix) -> np.ndarray:
    if mix is None:
        return y
    lam, partner = mix
    return lam[:, None] * y + (1 - lam[:, None]) * y[partner]


# ------------------------------------------------------------------ apply

def apply(model, config: DistillConfig | None = None, train: Dataset | None = None, val: Dataset | None = None,
          unlabeled: Dataset | None = None) -> TechniqueResult:
    """Train a lighter student to reproduce `model` (the teacher).

    The loss is `_training.distillation_loss` with soft_weight 1 and hard_weight `config.alpha`
    (T^2 KL at `config.temperature` + alpha x cross-entropy on the labels), the soft term alone
    where a sample has no label.

    Args:
        model: the trained teacher, a built keras.Model with one classifier output. Never changed.
        config: a `DistillConfig` (default: a half-width copy, T=2, alpha=0.5, 30 epochs).
        train: the train data; labels are optional (without them the teacher's outputs alone
            teach, which is how distillation uses unlabelled data).
        val: labelled data to measure teacher and student accuracy on (optional).
        unlabeled: more inputs without labels (optional; any labels they carry are ignored): the
            teacher's outputs alone teach on them, beside `train`. This is where distillation
            earns its keep: a few labels and many unlabelled images of the deployment data.

    Returns:
        A `TechniqueResult` whose model is the trained student (a plain Keras model); the report
        holds the student's description, FLOPs and parameters of both, their ratio, the training
        and accuracies on `val`.

    Raises:
        KerasTurboError: no train data; labels beyond the teacher's classes; a student whose output
            shape differs from the teacher's; an unknown student name; `labels_only` without labels
            or with unlabelled data; unlabelled inputs shaped unlike the train inputs.

    Example:
        >>> r = distill.apply(teacher, DistillConfig(student="width:0.4", epochs=20), train, val)
        >>> r.report["flops_ratio"], r.report["student_accuracy"]
    """
    config = config or DistillConfig()
    keras = check_model(model, "distill")
    probe = _check_data(model, config, train)
    teacher = _Teacher(model, probe, train, unlabeled, config)
    keras.utils.set_random_seed(config.seed)  # the student's initial weights
    student, description = make_student(model, config.student, teacher.outputs_probs)
    trained, student_probs = _trained_view(model, student, train)
    loss, kind, targets = _objective(keras, config, teacher, student_probs)
    keras.utils.set_random_seed(config.seed)
    steps = config.epochs * math.ceil(len(teacher.x[0]) / config.batch_size)
    lr = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps)
    trained.compile(optimizer=keras.optimizers.Adam(lr), loss=loss)
    hist = trained.fit(batches(keras, teacher.x, targets, config, lambda xb: feed(student, xb)), epochs=1, verbose=0)
    training = {"epochs": config.epochs, "steps": steps, "samples": len(train), "labels": teacher.labels,
                "unlabeled_samples": len(teacher.x[0]) - len(train), "shift": config.shift, "mixup": config.mixup,
                "final_loss": float(hist.history["loss"][-1])}
    report = _report(model, student, trained, teacher, val, description=description, loss=kind, training=training)
    return TechniqueResult("distill", student, config, report)


def _check_data(model, config: DistillConfig, train: Dataset | None) -> np.ndarray:
    """Refuses what distillation cannot use; returns the teacher's outputs on a few samples."""
    if train is None or len(train) == 0:
        raise KerasTurboError("distillation needs train data (--train-data DATA); labels are optional")
    if len(model.outputs) != 1:
        raise KerasTurboError(f"distill: teacher {model.name!r} has {len(model.outputs)} outputs; distillation supports one")
    probe = predict(model, tuple(a[:64] for a in train.x))
    if probe.ndim != 2 or probe.shape[-1] < 2:
        raise KerasTurboError(f"distill: teacher {model.name!r} outputs shape {probe.shape[1:]}; distillation needs "
                              "class scores (batch, classes)")
    classes = probe.shape[-1]
    if train.y is not None and (train.y.min() < 0 or train.y.max() >= classes):
        raise KerasTurboError(f"--train-data: {train.source}: labels {int(train.y.min())}..{int(train.y.max())} do not fit "
                              f"the teacher's {classes} output classes")
    if config.labels_only and train.y is None:
        raise KerasTurboError(f"distill: labels_only needs labelled train data ({train.source} has no labels)")
    if config.shift and not any(a.ndim == 4 for a in train.x):
        raise KerasTurboError(f"distill: shift moves images (batch, height, width, channels); {train.source} has inputs "
                              f"shaped {[a.shape[1:] for a in train.x]}")
    return probe


def _trained_view(teacher, student, train: Dataset):
    """(the model that trains: the student's logits where its softmax can be seen, which share its
    variables (see logits_view), else the student itself; whether that model outputs probabilities)."""
    s_shape, t_shape = tuple(student.outputs[0].shape[1:]), tuple(teacher.outputs[0].shape[1:])
    if len(student.outputs) != 1 or s_shape != t_shape:
        raise KerasTurboError(f"--student: the student's output shape {s_shape} differs from the teacher's {t_shape}")
    probs = looks_like_probabilities(predict(student, tuple(a[:64] for a in train.x)))
    view = logits_view(student) if probs else None
    return (view, False) if view is not None else (student, probs)


class _Teacher:
    """The teacher's side of the training: its scores (real logits where its softmax can be seen,
    see logits_view; log(p) otherwise) on every training input, and the label rows beside them."""

    def __init__(self, model, probe: np.ndarray, train: Dataset, unlabeled: Dataset | None, config: DistillConfig):
        classes = probe.shape[-1]
        self.model, self.labels = model, train.y is not None
        self.outputs_probs = looks_like_probabilities(probe)
        view = logits_view(model) if self.outputs_probs else None
        self.probs = self.outputs_probs and view is None   # its packed scores are probabilities
        self.scores = view or model
        self.x = train.x
        self.out = predict(self.scores, train.x).astype("float32")
        self.onehot = (np.eye(classes, dtype="float32")[train.y.astype("int64")] if self.labels
                       else np.zeros((len(self.out), classes), "float32"))
        if unlabeled is not None and len(unlabeled):
            self._add_unlabeled(unlabeled, train, config, classes)

    def _add_unlabeled(self, unlabeled: Dataset, train: Dataset, config: DistillConfig, classes: int) -> None:
        if config.labels_only:
            raise KerasTurboError("distill: labels_only trains on labels alone and cannot use unlabelled data")
        if [a.shape[1:] for a in unlabeled.x] != [a.shape[1:] for a in train.x]:
            raise KerasTurboError(f"--unlabeled-data: {unlabeled.source}: inputs shaped {[a.shape[1:] for a in unlabeled.x]}, "
                                  f"the train data's are {[a.shape[1:] for a in train.x]}")
        # A zero label row makes the hard-label term vanish for these samples: the teacher alone teaches.
        self.x = tuple(np.concatenate([a, b]) for a, b in zip(train.x, unlabeled.x))
        self.out = np.concatenate([self.out, predict(self.scores, unlabeled.x).astype("float32")])
        self.onehot = np.concatenate([self.onehot, np.zeros((len(unlabeled), classes), "float32")])

    def on(self, xb, idx):
        """The teacher's scores on a batch: looked up, or on augmented inputs computed on what the
        student actually sees."""
        if xb is None:
            return self.out[idx]
        return np.asarray(self.scores(feed(self.model, xb), training=False), "float32")


def _objective(keras, config: DistillConfig, teacher: _Teacher, student_probs: bool):
    """(loss, its description, targets(batch inputs, index, mix) for `batches`)."""
    augmented = bool(config.shift or config.mixup)
    if config.labels_only:
        loss = keras.losses.CategoricalCrossentropy(from_logits=not student_probs)
        kind = "cross-entropy on labels only (no teacher)"

        def targets(xb, idx, mix):
            return _mix(teacher.onehot[idx], mix)
    else:
        soft, hard = loss_weights(config, teacher.labels)
        loss = distillation_loss(keras.ops, temperature=config.temperature, soft_weight=soft, hard_weight=hard,
                                 label_layout="distribution", teacher_probs=teacher.probs, student_probs=student_probs)
        kind = (f"T^2 x KL at T={config.temperature:g}" + (f" + {hard:g} x cross-entropy" if hard else "")
                + ("" if teacher.labels else " (no labels: pure distillation)"))

        def targets(xb, idx, mix):
            return np.concatenate([_mix(teacher.onehot[idx], mix), teacher.on(xb if augmented else None, idx)], axis=1)
    if augmented:
        kind += ", on " + " + ".join(([f"shifts up to {config.shift:g} of the size"] if config.shift else [])
                                     + ([f"mixup Beta({config.mixup:g})"] if config.mixup else []))
    return loss, kind, targets


def _report(model, student, trained, teacher: _Teacher, val: Dataset | None, *, description: str, loss: str,
            training: dict) -> dict:
    """The student, the loss, what each side trained on, FLOPs and parameters of both, the
    training, and both accuracies on `val`."""
    t_info, s_info = describe_keras(model), describe_keras(student)
    return {
        "student": description, "loss": loss, "teacher_outputs": "probabilities" if teacher.outputs_probs else "logits",
        "soft_targets_from": "teacher logits" if not teacher.probs else "log of the teacher's probabilities",
        "student_trained_on": "logits (before its softmax)" if trained is not student else "its outputs",
        "teacher_flops": t_info["flops_per_sample"], "student_flops": s_info["flops_per_sample"],
        "flops_ratio": s_info["flops_per_sample"] / max(1, t_info["flops_per_sample"]),
        "teacher_params": t_info["params"], "student_params": s_info["params"],
        "training": training,
        "teacher_accuracy": accuracy(model, val), "student_accuracy": accuracy(student, val),
    }
