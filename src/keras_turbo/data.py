"""DATA arguments: turn what the user points at into arrays that fit the model.

A DATA spec is one of:
  - `path.npz` holding `x` (or, for a multi-input model, one `x_<input name>` per input) and,
    optionally, labels: `y` for the first output (output_0) and `y_<output name>` for any
    output (`y_output_1`, ... as `inspect` names them). Labels keep the shape the output has:
    class ids or one-hot rows for a multi-class output, 0/1 for a binary one, 0/1 rows for a
    multi-label one, targets for a regression output, and for a per-position (segmentation)
    output a mask of class ids (N, H, W) or the output's own shape;
  - a folder with one sub-folder of images per class (sub-folder names, sorted, are the
    classes), resized to the model's input and scaled to [0, 1];
  - `path.txt`, plain text, one sample per line (blank lines skipped), for a model whose one
    input takes strings (TextVectorization, StringLookup);
  - `builtin:digits`, scikit-learn's 1,797 8x8 handwritten digits (shipped inside the package,
    nothing is downloaded), brought to the model's input size and scaled to [0, 1]. Fixed splits
    (seed 0): 70% train, 15% validation, 15% test; `builtin:digits:train|val|test|heldout|all` picks one,
    `heldout` is validation and test together (everything a model trained on the train split
    has not trained its weights on), and a plain `builtin:digits` means the split that fits the
    job (test for evaluation, train for training).
"""

from __future__ import annotations

import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from keras_turbo.errors import DataError, ModelLoadError, cause
from keras_turbo.model import require_own_file
from keras_turbo.model.signature import STRING, TensorInfo

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test", "heldout", "all")
TEXT_SUFFIXES = (".txt",)
# A text DATA file is read whole; one this size is not a set of samples for a text model.
MAX_TEXT_BYTES = 1 << 30


@dataclass(frozen=True)
class Dataset:
    """Inputs (one array per model input, in input-name order), optional labels, and where they
    came from."""

    x: tuple[np.ndarray, ...]
    y: np.ndarray | None
    source: str
    #: every output's labels, in the output's shape (None for an output without labels), once
    #: `check` has matched them to the model's outputs; before that, the arrays by npz name
    labels: tuple | dict | None = None

    def __len__(self) -> int:
        return int(self.x[0].shape[0])

    def subset(self, idx, labels: bool = True) -> "Dataset":
        """The samples at `idx` (None: all), with or without the labels."""
        pick = (lambda a: a) if idx is None else (lambda a: a[idx])  # noqa: E731
        if not labels:
            return Dataset(tuple(pick(a) for a in self.x), None, self.source)
        lab = self.labels
        if isinstance(lab, dict):
            lab = {k: pick(v) for k, v in lab.items()}
        elif lab is not None:
            lab = tuple(None if v is None else pick(v) for v in lab)
        return Dataset(tuple(pick(a) for a in self.x), None if self.y is None else pick(self.y), self.source, lab)

    def take(self, n: int, seed: int = 0) -> "Dataset":
        """A reproducible random subset of at most `n` samples."""
        if n >= len(self):
            return self
        return self.subset(np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False)))

    def output_labels(self, count: int) -> list:
        """`count` entries, one per output: its labels or None."""
        lab = list(self.labels) if isinstance(self.labels, tuple) else [self.y]
        return (lab + [None] * count)[:count]


def digits_splits(seed: int = 0) -> dict[str, np.ndarray]:
    """Indices of the fixed train / val / test splits of scikit-learn's digits."""
    idx = np.random.default_rng(seed).permutation(1797)
    n_train, n_val = int(0.70 * 1797), int(0.15 * 1797)
    return {"train": idx[:n_train], "val": idx[n_train:n_train + n_val], "test": idx[n_train + n_val:],
            "heldout": idx[n_train:], "all": np.arange(1797)}


def fit_images(images: np.ndarray, shape: Sequence[int | None]) -> np.ndarray:
    """Bring a batch of grayscale (N, H, W) or colour (N, H, W, C) images in [0, 1] to a model
    input shape (without batch): (H', W', C'), (H', W') or a flat (H'*W'*C',)."""
    import PIL.Image

    if images.ndim == 3:
        images = images[..., None]
    shape = tuple(shape)
    if len(shape) == 1:
        # A flat input: keep the native size if it fits, else try a square grayscale image.
        side = int(round(np.sqrt(shape[0])))
        if shape[0] == np.prod(images.shape[1:]):
            return images.reshape(len(images), -1).astype("float32")
        if side * side != shape[0]:
            raise DataError(f"cannot bring {images.shape[1:]} images to a flat input of {shape[0]} values")
        return fit_images(images, (side, side, 1)).reshape(len(images), -1)
    if len(shape) == 2:
        return fit_images(images, (*shape, 1))[..., 0]
    if len(shape) != 3 or any(d is None for d in shape):
        raise DataError(f"images cannot be fitted to an input of shape {shape} (expected (height, width, channels))")
    h, w, c = shape
    if c not in (1, 3):
        raise DataError(f"images cannot be fitted to {c} channels (expected 1 or 3)")
    if images.shape[-1] != c:
        images = images.mean(axis=-1, keepdims=True) if c == 1 else np.repeat(images[..., :1], 3, axis=-1)
    if images.shape[1:3] == (h, w):
        return images.astype("float32")
    out = np.empty((len(images), h, w, c), dtype="float32")
    for i, img in enumerate(images):
        for ch in range(c):
            pil = PIL.Image.fromarray(img[..., ch].astype("float32"), mode="F")
            out[i, ..., ch] = np.asarray(pil.resize((w, h), PIL.Image.BILINEAR))
    return out


def load_digits(inputs: Sequence[TensorInfo] | None, split: str) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    idx = digits_splits()[split]
    images = (d.images[idx] / 16.0).astype("float32")
    if inputs is None:
        x = images[..., None]
    else:
        if len(inputs) != 1:
            raise DataError(f"builtin:digits: fits single-input models; this one takes {len(inputs)} inputs")
        x = fit_images(images, inputs[0].shape[1:])
    return Dataset((x,), d.target[idx].astype("int64"), f"builtin:digits:{split}")


def _npy_members(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, holding at most one copy of the data in memory.

    np.load would decompress each member into a bytes buffer and then copy it into an array
    (two copies at the peak, more when the caller converts). Here an uncompressed member is
    memory-mapped straight from the .npz (the page cache holds it; nothing is copied), and a
    compressed one is decompressed in chunks into its final array. Pickled (object) arrays are
    refused: reading them would run code.
    """
    out = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with z.open(info) as fh:
                fmt = np.lib.format
                version = fmt.read_magic(fh)
                read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, fortran, dtype = read_header(fh)
                if dtype.hasobject:
                    raise DataError(f"{path}: array {info.filename[:-4]!r} holds Python objects (pickled); refused "
                                    "(save text as a str array: np.savez(f, x=np.array(texts, dtype=str)))")
                header_len = fh.tell()
                count = int(np.prod(shape, dtype=np.int64))
                order = "F" if fortran else "C"
                # The header's shape must match the bytes the member holds: a small file must not
                # make us allocate what its header claims (an npz bomb).
                if header_len + count * dtype.itemsize != info.file_size:
                    raise DataError(f"{path}: array {info.filename[:-4]!r} declares shape {shape} but holds "
                                    f"{info.file_size - header_len:,} bytes (damaged or hostile)")
                if info.compress_type != zipfile.ZIP_STORED and count * dtype.itemsize > _available_bytes():
                    raise DataError(f"{path}: array {info.filename[:-4]!r} inflates to {count * dtype.itemsize / 2**30:.1f} GiB, "
                                    "more than the memory available (store it uncompressed: np.savez, not savez_compressed)")
                if info.compress_type == zipfile.ZIP_STORED and count:
                    out[info.filename[:-4]] = np.memmap(path, dtype=dtype, mode="r", shape=shape, order=order,
                                                        offset=_member_data_offset(path, info) + header_len)
                    continue
                flat = np.empty(count, dtype=dtype)
                view = memoryview(flat.view(np.uint8))
                done = 0
                while done < len(view):
                    n = fh.readinto(view[done:done + (16 << 20)])
                    if not n:
                        raise DataError(f"{path}: array {info.filename[:-4]!r} is truncated")
                    done += n
                out[info.filename[:-4]] = flat.reshape(shape, order=order)
    return out


def _available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def _member_data_offset(path: Path, info) -> int:
    """Where a stored zip member's bytes start: after its local header, whose name and extra
    field lengths may differ from the central directory's."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def load_npz(path: Path, inputs: Sequence[TensorInfo] | None) -> Dataset:
    try:
        files = _npy_members(path)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read as .npz ({cause(e)})") from e
    y = files.get("y")
    labels = {k: v for k, v in files.items() if k == "y" or k.startswith("y_")}
    if inputs is not None and len(inputs) > 1:
        missing = [t.name for t in inputs if f"x_{t.name}" not in files]
        if missing:
            raise DataError(f"{path}: a multi-input model needs arrays {', '.join('x_' + t.name for t in inputs)}; missing {', '.join('x_' + m for m in missing)}")
        x = tuple(files[f"x_{t.name}"] for t in inputs)
    elif "x" in files:
        x = (files["x"],)
    else:
        raise DataError(f"{path}: no array named 'x' (found: {', '.join(files) or 'none'})")
    return Dataset(x, y, str(path), labels or None)


def load_text(path: Path, inputs: Sequence[TensorInfo] | None, arg: str = "DATA") -> Dataset:
    """One sample per line of a UTF-8 text file (line ends and blank lines dropped), for a model
    whose single input takes strings; shaped (n,) or (n, 1) as that input is."""
    if inputs is not None and (len(inputs) != 1 or inputs[0].dtype != STRING):
        takes = ", ".join(f"{t.name} ({t.dtype})" for t in inputs)
        raise DataError(f"{arg}: {path}: a text file fits a model with one string input; this one takes {takes}")
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise DataError(f"{arg}: {path}: {path.stat().st_size / 2**30:.1f} GiB of text, over the "
                        f"{MAX_TEXT_BYTES >> 30} GiB keras-turbo reads as DATA")
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise DataError(f"{arg}: {path}: not UTF-8 text ({cause(e)})") from e
    x = np.array(lines, dtype=str)
    if inputs is not None and len(inputs[0].shape) == 2:
        x = x[:, None]
    return Dataset((x,), None, str(path))


# A 97 KB PNG of 9000 x 9000 once took 2.7 GB to decode; no classification input needs more
# than this many pixels. Checked on the header, before decoding.
MAX_IMAGE_PIXELS = 32 * 1024 * 1024


def load_image_folder(path: Path, inputs: Sequence[TensorInfo] | None) -> Dataset:
    import PIL.Image

    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{path}: a DATA folder needs one sub-folder of images per class; found none")
    if inputs is not None and len(inputs) != 1:
        raise DataError(f"{path}: image folders fit single-input models; this one takes {len(inputs)} inputs")
    shape = inputs[0].shape[1:] if inputs is not None else None
    xs, ys = [], []
    # PIL's own bomb check stays as a backstop, above ours (which names the size).
    PIL.Image.MAX_IMAGE_PIXELS = 4 * MAX_IMAGE_PIXELS
    for label, cls in enumerate(classes):
        for f in sorted((path / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            _own_file(f, path)
            try:
                with PIL.Image.open(f) as im:  # reads the header only
                    if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                        raise DataError(f"{f}: {im.size[0]} x {im.size[1]} pixels, over the {MAX_IMAGE_PIXELS:,} "
                                        "keras-turbo decodes (resize it first)")
                    arr = np.asarray(im.convert("RGB"), dtype="float32") / 255.0
            except DataError:
                raise
            except PIL.Image.DecompressionBombError as e:
                raise DataError(f"{f}: over the {MAX_IMAGE_PIXELS:,} pixels keras-turbo decodes (resize it first)") from e
            except Exception as e:
                raise DataError(f"{f}: not a readable image ({type(e).__name__})") from e
            if shape is not None:
                arr = fit_images(arr[None], shape)[0]
            xs.append(arr)
            ys.append(label)
    if not xs:
        raise DataError(f"{path}: no images found in its class folders ({', '.join(classes)})")
    try:
        x = np.stack(xs)
    except ValueError as e:
        raise DataError(f"{path}: images differ in size; give the model so they can be resized") from e
    return Dataset((x,), np.asarray(ys, dtype="int64"), str(path))


def _own_file(f: Path, folder: Path | None) -> None:
    """Data files are regular files (a FIFO named x.png must not hang the run), and an image
    folder's files lie inside it."""
    try:
        require_own_file(f, folder, "a data file")
    except ModelLoadError as e:
        raise DataError(str(e)) from None


def load_data(spec: str, inputs: Sequence[TensorInfo] | None = None, outputs: Sequence[TensorInfo] | None = None,
              default_split: str = "test", arg: str = "DATA", scales_inputs: bool | None = None) -> Dataset:
    """Read a DATA spec and check it against the model's inputs (and outputs, for labels).

    Args:
        spec: `path.npz`, an image folder, or `builtin:digits[:split]`.
        inputs: the model's inputs (`Predictor.inputs`); None reads the data as it is.
        outputs: the model's outputs; when given, labels are checked against the class count.
        default_split: the digits split a plain `builtin:digits` means.
        arg: the argument's name, for error messages ("--data", "--calibration-data", ...).
        scales_inputs: whether the model scales its own inputs (`models.scales_inputs`); False
            turns on the warning for 0-255 image data (see `check`).

    Returns:
        A `Dataset` whose arrays fit the model's inputs.

    Raises:
        DataError: unreadable data, wrong shapes, NaN or inf values, labels out of range.
    """
    spec = str(spec)
    if spec.startswith("builtin:"):
        parts = spec.split(":")
        if parts[1] != "digits" or len(parts) > 3:
            raise DataError(f"{arg}: unknown built-in data set {spec!r} (expected builtin:digits[:train|val|test|heldout|all])")
        split = parts[2] if len(parts) == 3 else default_split
        if split not in SPLITS:
            raise DataError(f"{arg}: unknown split {split!r} in {spec!r} (expected one of {', '.join(SPLITS)})")
        ds = load_digits(inputs, split)
    else:
        path = Path(spec)
        if not path.exists():
            raise DataError(f"{arg}: {path}: no such file or directory")
        if path.is_dir():
            ds = load_image_folder(path, inputs)
        elif path.suffix.lower() == ".npz":
            _own_file(path, None)
            ds = load_npz(path, inputs)
        elif path.suffix.lower() in TEXT_SUFFIXES:
            _own_file(path, None)
            ds = load_text(path, inputs, arg)
        else:
            raise DataError(f"{arg}: {path}: expected a .npz file, a .txt file (one text per line), an image folder "
                            "or builtin:digits")
    return check(ds, inputs, outputs, arg, scales_inputs)


def _integral(a: np.ndarray, rows: int = 4096) -> bool:
    """Whether every value of an array is a whole number: integer and bool arrays are; a float one
    is checked a block of rows at a time (a whole-array round is another copy of the data).

    (It was defined twice, and the second, whole-array definition replaced this one for every
    caller, the input check of a large .npz included.)"""
    if np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
        return True
    if not np.issubdtype(a.dtype, np.floating):
        return False
    return all(bool(np.all(b == np.round(b))) for b in (a[i:i + rows] for i in range(0, len(a), rows)))


def _non_finite(a: np.ndarray, rows: int = 4096) -> int:
    """NaN and inf count, a block of rows at a time (a whole-array isfinite is another copy)."""
    return sum(int(np.size(b) - np.count_nonzero(np.isfinite(b))) for b in (a[i:i + rows] for i in range(0, len(a), rows)))


def _warn_if_unscaled(a: np.ndarray, name: str, want: str, arg: str, source: str) -> None:
    """One line when image-like data in 0..255 goes to a float input of a model that does not
    scale its inputs: it was almost surely trained on [0, 1] (uint8 digits into a [0, 1] model
    scored 19.7% instead of 100%, silently)."""
    if a.ndim < 3 or not np.issubdtype(np.dtype(want), np.floating) or len(a) == 0:
        return
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        return
    rows = 4096
    lo = min(float(a[i:i + rows].min()) for i in range(0, len(a), rows))
    hi = max(float(a[i:i + rows].max()) for i in range(0, len(a), rows))
    if lo >= 0 and 1.5 < hi <= 255:
        warnings.warn(f"{arg}: {source}: input {name!r} holds {a.dtype} values in {lo:g}..{hi:g}, but the model takes "
                      f"{want} and has no Rescaling or Normalization layer; if it was trained on [0, 1] inputs, "
                      "divide the data by 255 (accuracy will suffer otherwise)", stacklevel=3)


def warn_if_outside(ds: Dataset, ranges, inputs: Sequence[TensorInfo], arg: str = "DATA") -> None:
    """One line per input whose data reaches far outside the range the model can represent
    (`Predictor.input_ranges`: an int8 input quantized with its calibration data's range):
    0-255 data into a model calibrated on [0, 1] is clipped to garbage, silently otherwise."""
    for a, r, t in zip(ds.x, ranges or (), inputs):
        if r is None or len(a) == 0:
            continue
        rows = 4096
        lo = min(float(a[i:i + rows].min()) for i in range(0, len(a), rows))
        hi = max(float(a[i:i + rows].max()) for i in range(0, len(a), rows))
        span = max(r[1] - r[0], 1e-12)
        if lo < r[0] - 0.5 * span or hi > r[1] + 0.5 * span:
            warnings.warn(f"{arg}: {ds.source}: input {t.name!r} holds values in {lo:g}..{hi:g}, but the model was "
                          f"calibrated for {r[0]:.3g}..{r[1]:.3g} and clips the rest; scale the data as in calibration",
                          stacklevel=3)


def check(ds: Dataset, inputs: Sequence[TensorInfo] | None, outputs: Sequence[TensorInfo] | None, arg: str = "DATA",
          scales_inputs: bool | None = None) -> Dataset:
    """Validate a Dataset against a model; returns it with float inputs cast to the model's dtype.
    With `scales_inputs=False` (the model has no Rescaling / Normalization layer), warns when
    image-like data in 0..255 reaches a float input."""
    n = len(ds.x[0])
    if n == 0:
        raise DataError(f"{arg}: {ds.source}: holds no samples")
    xs = []
    for i, a in enumerate(ds.x):
        name = inputs[i].name if inputs is not None else f"x{i}"
        if a.shape[0] != n:
            raise DataError(f"{arg}: {ds.source}: inputs hold different sample counts ({n} and {a.shape[0]})")
        text = a.dtype.kind in "US"
        if inputs is not None and (inputs[i].dtype == STRING) != text:
            want = "text (a str array, or a .txt file)" if inputs[i].dtype == STRING else f"{inputs[i].dtype} numbers"
            raise DataError(f"{arg}: {ds.source}: input {name!r} takes {want}, the data holds {a.dtype} values")
        if not (text or np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise DataError(f"{arg}: {ds.source}: input {name!r} holds {a.dtype} values, not numbers")
        if inputs is not None and not text and np.issubdtype(np.dtype(inputs[i].dtype), np.integer) \
                and np.issubdtype(a.dtype, np.floating) and not _integral(a):
            raise DataError(f"{arg}: {ds.source}: input {name!r} takes {inputs[i].dtype} (token ids, indices); the data "
                            f"holds {a.dtype} values with fractions")
        if np.issubdtype(a.dtype, np.floating):
            bad = _non_finite(a)
            if bad:
                raise DataError(f"{arg}: {ds.source}: input {name!r} holds {bad} NaN or inf value(s)")
        if text and a.ndim == 1 and inputs is not None and tuple(inputs[i].shape[1:]) == (1,):
            a = a[:, None]  # one text per sample, for an Input(shape=(1,), dtype="string")
        if inputs is not None:
            want = inputs[i].shape[1:]
            if a.ndim != len(inputs[i].shape) or any(w is not None and w != g for w, g in zip(want, a.shape[1:])):
                shown = ", ".join("?" if d is None else str(d) for d in want)
                raise DataError(f"{arg}: {ds.source}: input {name!r} has samples of shape {a.shape[1:]}, the model expects ({shown})")
            if text:
                xs.append(a)
                continue
            if scales_inputs is False:
                _warn_if_unscaled(a, name, inputs[i].dtype, arg, ds.source)
            a = a.astype(inputs[i].dtype, copy=False)
        xs.append(a)
    labels = _match_labels(ds, n, outputs, arg)
    y = _class_ids(labels[0]) if labels and labels[0] is not None else None
    return Dataset(tuple(xs), y, ds.source, None if all(v is None for v in labels) else tuple(labels))


def _raw_labels(ds: Dataset, outputs) -> dict:
    """The label arrays by the name they answer to: "y" or "y_<output name>"."""
    if isinstance(ds.labels, dict):
        return dict(ds.labels)
    if isinstance(ds.labels, tuple):  # already matched (a checked Dataset checked again)
        names = [t.name for t in outputs] if outputs is not None else [f"output_{i}" for i in range(len(ds.labels))]
        return {f"y_{nm}": v for nm, v in zip(names, ds.labels) if v is not None}
    return {} if ds.y is None else {"y": ds.y}


def _match_labels(ds: Dataset, n: int, outputs, arg: str) -> list:
    """Each output's labels, checked against its shape and kept in it (class ids where the labels
    are ids); `y` is the first output's."""
    raw = _raw_labels(ds, outputs)
    if outputs is None:
        return [_checked(np.asarray(raw["y"]), n, None, "y", arg, ds.source)] if "y" in raw else []
    names = [t.name for t in outputs]
    unknown = [k for k in raw if k != "y" and k[2:] not in names]
    if unknown:
        raise DataError(f"{arg}: {ds.source}: labels {', '.join(unknown)} name no output of the model "
                        f"(outputs: {', '.join(names)}; labels are y or y_<output name>)")
    if "y" in raw and f"y_{names[0]}" in raw:
        raise DataError(f"{arg}: {ds.source}: both y and y_{names[0]} label the first output; keep one")
    out = []
    for i, t in enumerate(outputs):
        a = raw.get(f"y_{t.name}", raw.get("y") if i == 0 else None)
        out.append(None if a is None else _checked(np.asarray(a), n, t.shape, f"y_{t.name}" if i else "y", arg, ds.source))
    return out


def _checked(a: np.ndarray, n: int, shape, name: str, arg: str, source: str) -> np.ndarray:
    """One output's labels: the right count, numbers, finite, and a shape that fits the output:
    its own shape, or class ids (one per sample for a class-score output, one per position for a
    per-position one). Class ids are checked against the class count."""
    where = f"{arg}: {source}:"
    if a.shape[:1] != (n,):
        raise DataError(f"{where} {a.shape[0] if a.ndim else 0} labels for {n} samples" + (f" ({name})" if name != "y" else ""))
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise DataError(f"{where} labels {name} hold {a.dtype} values, not numbers")
    if np.issubdtype(a.dtype, np.floating) and _non_finite(a):
        raise DataError(f"{where} labels {name} hold NaN or inf values")
    if shape is None:
        return a
    out, classes = tuple(shape[1:]), shape[-1] if len(shape) > 1 else None
    fits = lambda got, want: len(got) == len(want) and all(w is None or w == g for g, w in zip(got, want))  # noqa: E731
    ids = None
    if len(out) == 1 and classes and classes > 1 and (a.ndim == 1 or a.shape[1:] == (1,)):
        ids = a.reshape(n)  # a class id per sample
    elif len(out) > 1 and classes and classes > 1 and (fits(a.shape[1:], out[:-1]) or fits(a.shape[1:], (*out[:-1], 1))):
        ids = a.reshape(a.shape[:len(out)])  # a class id per position (a segmentation mask)
    if ids is not None:
        if not _integral(ids):
            raise DataError(f"{where} labels {name} must be integer class ids for an output of {classes} classes "
                            f"(received {a.dtype} values)")
        ids = ids.astype("int64")
        if ids.size and (ids.min() < 0 or ids.max() >= classes):
            raise DataError(f"{where} labels out of range (found {int(ids.min())}..{int(ids.max())}, the model has {classes} classes)")
        return ids
    if fits(a.shape[1:], out):
        return a
    if out and all(d is not None for d in out) and a.size == n * int(np.prod(out)) and \
            tuple(d for d in a.shape[1:] if d != 1) == tuple(d for d in out if d != 1):
        return a.reshape((n, *out))  # (N,) for an (N, 1) output, and the like
    shown = ", ".join("?" if d is None else str(d) for d in out)
    ids_too = " or class ids" if classes and classes > 1 else ""
    raise DataError(f"{where} labels {name} have samples of shape {a.shape[1:]}; the output takes ({shown}){ids_too}")


def _class_ids(labels: np.ndarray) -> np.ndarray | None:
    """The first output's labels as one class id per sample, where they are that (the form the
    training techniques and the classification summary use); None otherwise (targets, masks,
    multi-hot rows)."""
    a = np.asarray(labels)
    if a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1):
        return a.reshape(len(a)).astype("int64") if _integral(a) else None
    if a.ndim == 2 and _integral(a) and a.size and a.min() >= 0 and a.max() <= 1 and np.all(a.sum(axis=1) == 1):
        return a.argmax(axis=1).astype("int64")  # one-hot rows
    return None
