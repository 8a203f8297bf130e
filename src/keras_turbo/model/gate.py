"""The one gate every SavedModel passes before TensorFlow (or a converter) loads it.

A SavedModel holds no Python, but its graph can read and write files: `PrintV2` to a
`file://` stream, `WriteFile`, `Save`, summary writers, dataset ops that read records, and a
resource initializer runs at load time, before any of the user's data flows. A deny-list missed
some of these (issue 15), so this is an allow-list: the op types that Keras-exported models of
common layers use (derived by exporting the test models, the digits CNN, recurrent, text and
preprocessing layers and several keras.applications models with `weights=None`, and collecting
the ops of the graph and of every function in its library), plus pure tensor math of the same
kind. Everything else is refused by name unless the user passes --unsafe.

The check reads `saved_model.pb` with the protobuf parser alone (TensorFlow's generated message
classes; no graph is imported or run). It covers the top-level graph and every function of the library (serving functions,
resource initializers, While / If bodies), whether or not anything calls them.

TensorFlow's own saver functions (`__inference__traced_save/_restore`, named by the
MetaGraph's `saver_def`) hold SaveV2 / RestoreV2; they are allowed those ops and no others
beyond the allow-list, and refused if anything but the saver_def's own nodes calls them, so an
attacker cannot route a serving function or initializer through them. TensorFlow's TF2 loader
restores variables from the checkpoint in Python and never runs those functions; a TF1-style
SavedModel (no object graph) is loaded by running its graph's restore op, so it is refused in
safe mode.
"""

from __future__ import annotations

from pathlib import Path

from keras_turbo import _tf
from keras_turbo.errors import ModelLoadError, UnsafeModelError

# Ops seen in Keras 3.15 exports of: Conv/Dense/BN/pooling/activations, Conv2DTranspose,
# UpSampling, GroupNorm/LayerNorm, Rescaling/Normalization, LSTM/GRU/SimpleRNN/Bidirectional,
# MultiHeadAttention, TextVectorization/StringLookup/IntegerLookup/Hashing/CategoryEncoding,
# Embedding, MobileNetV2/V3, EfficientNetB0, ResNet50, DenseNet121, ConvNeXtTiny (without the
# saver-only ops, which SAVER_OPS lists).
_SEEN = {
    "Add", "AddV2", "AsString", "AssignVariableOp", "AvgPool", "BatchMatMulV2", "BiasAdd", "Cast", "ConcatV2",
    "Const", "Conv2D", "Conv2DBackpropInput", "Cumsum", "DenseBincount", "DepthwiseConv2dNative", "DisableCopyOnRead",
    "Einsum", "Elu", "Equal", "Erfc", "ExpandDims", "Fill", "GatherV2", "Greater", "HashTableV2", "Identity",
    "IdentityN", "LeakyRelu", "Less", "LogicalAnd", "LookupTableExportV2", "LookupTableFindV2", "LookupTableImportV2",
    "MatMul", "Max", "MaxPool", "Maximum", "Mean", "Minimum", "Mul", "MutableHashTableV2", "Neg", "NoOp", "Pack",
    "Pad", "PartitionedCall", "Placeholder", "Prod", "RaggedTensorToTensor", "Range", "ReadVariableOp", "RealDiv",
    "Relu", "Relu6", "Reshape", "ReverseV2", "Rsqrt", "Select", "SelectV2", "Shape", "Sigmoid", "Size", "Softmax",
    "Split", "Sqrt", "Square", "SquaredDifference", "Squeeze", "StatefulPartitionedCall", "StaticRegexFullMatch",
    "StaticRegexReplace", "StopGradient", "StridedSlice", "StringJoin", "StringLower", "StringSplitV2",
    "StringToHashBucketFast", "Sub", "Sum", "Tanh", "TensorListFromTensor", "TensorListGetItem", "TensorListReserve",
    "TensorListSetItem", "TensorListStack", "Tile", "Transpose", "VarHandleOp", "VarIsInitializedOp", "While",
}
# The same kind of op that other layers and older exports use: pure tensor math, shape and
# control flow, in-memory lookup tables, fake quantization (QAT). None touches a file or Python.
_PURE = {
    "Abs", "Acos", "Acosh", "AddN", "All", "Any", "ArgMax", "ArgMin", "Asin", "Asinh", "AssignAddVariableOp",
    "AssignSubVariableOp", "Atan", "Atan2", "Atanh", "AvgPool3D", "BatchMatMul", "BatchMatMulV3", "BatchToSpaceND",
    "BiasAddV1", "Bincount", "BroadcastArgs", "BroadcastTo", "Case", "Ceil", "CheckNumerics", "CheckNumericsV2",
    "ClipByValue", "Concat", "Conv", "Conv3D", "Conv3DBackpropInputV2", "Cos", "Cosh", "CropAndResize", "Cumprod",
    "DepthToSpace", "Div", "DivNoNan", "EmptyTensorList", "EnsureShape", "Erf", "EuclideanNorm", "Exp", "Expm1",
    "ExtractImagePatches", "FakeQuantWithMinMaxArgs", "FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel",
    "Floor", "FloorDiv", "FloorMod", "FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "GatherNd",
    "GreaterEqual", "If", "InTopKV2", "InitializeTableV2", "IsFinite", "IsInf", "IsNan", "LessEqual", "LinSpace",
    "Log", "Log1p", "LogSoftmax", "LogicalNot", "LogicalOr", "LookupTableInsertV2", "LookupTableSizeV2", "LRN",
    "MatrixBandPart", "MatrixDiagV3", "MaxPool3D", "MaxPoolV2", "Min", "MirrorPad", "Mod", "MutableDenseHashTableV2",
    "MutableHashTableOfTensorsV2", "NotEqual", "OneHot", "OnesLike", "PadV2", "PlaceholderWithDefault", "Pow",
    "PreventGradient", "QuantizeAndDequantizeV2", "QuantizeAndDequantizeV3", "QuantizeAndDequantizeV4",
    "RaggedRange", "RandomStandardNormal", "RandomUniform", "Rank", "Reciprocal", "RegexReplace", "Relu6",
    "ResizeArea", "ResizeBicubic", "ResizeBilinear", "ResizeNearestNeighbor", "ResourceGather", "ReverseSequence",
    "Round", "ScaleAndTranslate", "ScatterNd", "Selu", "ShapeN", "Sign", "Sin", "Sinh", "Slice", "Snapshot",
    "Softplus", "Softsign", "SpaceToBatchND", "SpaceToDepth", "SplitV", "StatelessCase", "StatelessIf",
    "StatelessRandomUniformV2", "StatelessRandomNormalV2", "StatelessWhile", "StringLength", "StringNGrams",
    "StringStrip", "StringToHashBucketStrong", "StringUpper", "Substr", "Tan", "TensorListConcatV2",
    "TensorListElementShape", "TensorListGather", "TensorListLength", "TensorListPopBack", "TensorListPushBack",
    "TensorListResize", "TensorListScatterIntoExistingList", "TensorListSplit", "TensorScatterUpdate", "TopKV2",
    "TruncateDiv", "TruncatedNormal", "Unique", "Unpack", "Where", "Xdivy", "Xlogy", "ZerosLike",
}
# Seen in a second sweep (augmentation layers, Discretization, TF-IDF and character
# TextVectorization, 3D convolutions, attention, EfficientNetV2, Xception, InceptionV3, VGG16),
# and their close kin that other settings of the same layers use.
_SEEN_MORE = {
    "Bucketize", "ImageProjectiveTransformV3", "RaggedBincount", "StatelessRandomGetKeyCounter", "UnicodeDecode",
    "UnicodeEncode", "UnicodeDecodeWithOffsets", "UnicodeTranscode", "StatelessRandomUniformIntV2",
    "StatelessTruncatedNormalV2", "StatelessRandomGetAlg", "StatelessRandomGetKeyCounterAlg", "RngReadAndSkip",
    "RandomUniformInt", "AdjustContrastv2", "AdjustHue", "AdjustSaturation", "RGBToHSV", "HSVToRGB",
    "ImageProjectiveTransformV2", "Assert", "StringFormat", "Bitcast", "Rint", "Inv", "Roll", "UniqueV2",
    "SegmentSum", "SegmentMean", "SegmentMax", "UnsortedSegmentSum", "UnsortedSegmentMax", "SparseToDense",
    "MatrixDiagPartV3", "MatrixSetDiagV3", "NonMaxSuppressionV3", "NonMaxSuppressionV4", "NonMaxSuppressionV5",
    "CombinedNonMaxSuppression", "RFFT", "IRFFT", "FFT", "IFFT", "ComplexAbs", "Complex", "Real", "Imag", "Angle",
    "Lgamma", "Erfinv", "Ndtri", "StringToNumber", "RegexFullMatch", "ReduceJoin", "StringToHashBucket",
    "Fingerprint", "LookupTableRemoveV2", "RaggedTensorToSparse", "RaggedTensorToVariant", "RaggedTensorFromVariant",
    "RaggedGather", "Conv3DBackpropInput", "Dilation2D", "DepthwiseConv2dNativeBackpropInput",
}
ALLOWED_OPS = frozenset(_SEEN | _PURE | _SEEN_MORE)

# Only inside TensorFlow's own saver functions (see the module docstring).
SAVER_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename"})

# Never allowed, whatever the list above becomes: they read or write files, or call Python.
# (A test checks that none of these slips into ALLOWED_OPS.)
NEVER = frozenset({
    "WriteFile", "ReadFile", "MatchingFiles", "DeleteFile", "RecursivelyCreateDir", "Save", "SaveSlices", "SaveV2",
    "Restore", "RestoreSlice", "RestoreV2", "MergeV2Checkpoints", "PrintV2", "Print", "PyFunc", "PyFuncStateless",
    "EagerPyFunc", "ImmutableConst", "CreateSummaryFileWriter", "CreateSummaryDbWriter", "SummaryWriter",
    "WriteSummary", "WriteScalarSummary", "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary",
    "WriteGraphSummary", "WriteRawProtoSummary", "FlushSummaryWriter", "CloseSummaryWriter", "ImportEvent",
    "MergeSummary", "ScalarSummary", "TensorSummaryV2", "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3",
    "DebugNanCount", "DebugNumericSummary", "DebugNumericSummaryV2", "InitializeTableFromTextFile",
    "InitializeTableFromTextFileV2", "TFRecordDataset", "TFRecordDatasetV2", "TextLineDataset",
    "FixedLengthRecordDataset", "SaveDataset", "SaveDatasetV2", "LoadDataset", "SnapshotDataset", "SnapshotDatasetV2",
    "MatchingFilesDataset", "TFRecordReaderV2", "WholeFileReaderV2", "ReaderReadV2", "DecodeProtoV2",
    "EncodeProto", "ReadVariableXlaSplitND",
})

# A graph this size is not a Keras export; refuse rather than parse gigabytes.
MAX_PB_BYTES = 512 << 20


def _refuse(path: Path, what: str) -> UnsafeModelError:
    return UnsafeModelError(f"{path}: {what}; refused in safe mode (pass --unsafe only if you trust this file)")


def _called(node) -> list[str]:
    """Names of the functions a node refers to through its attributes (f, body, cond, branches...)."""
    names = []
    for value in node.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        names.extend(f.name for f in value.list.func)
    return names


def check_savedmodel(path: str | Path, unsafe: bool = False) -> None:
    """Refuse a SavedModel folder whose graph holds an op outside `ALLOWED_OPS`.

    Call it before anything hands the folder to TensorFlow, tf2onnx, the LiteRT converter or
    OpenVINO. Does nothing when `unsafe`.

    Raises:
        UnsafeModelError: an op outside the list (named), a TF1-style SavedModel, a saver
            function called from elsewhere, or a reference to a function the file lacks.
        ModelLoadError: saved_model.pb is missing or not a SavedModel.
    """
    if unsafe:
        return
    path = Path(path)
    sm = _read_savedmodel(path)
    if len(sm.meta_graphs) != 1 or not sm.meta_graphs[0].HasField("object_graph_def"):
        raise _refuse(path, "a TensorFlow 1 style SavedModel (its loader runs the graph's own restore ops)")
    _check_graph(path, sm.meta_graphs[0])


def _read_savedmodel(path: Path):
    """The parsed `saved_model.pb` of a SavedModel folder (protobuf alone: nothing is imported or run).

    Raises:
        ModelLoadError: saved_model.pb is missing, too large, or not a SavedModel.
    """
    pb = path / "saved_model.pb"
    if not pb.is_file():
        raise ModelLoadError(f"{path}: no saved_model.pb file, so not a SavedModel")
    if pb.stat().st_size > MAX_PB_BYTES:
        raise ModelLoadError(f"{path}: saved_model.pb is {pb.stat().st_size >> 20} MiB; over the {MAX_PB_BYTES >> 20} MiB "
                             "keras-turbo reads (weights belong in variables/)")

    _tf.tf()  # importing the message classes imports TensorFlow: do it quietly, as everywhere else
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString(pb.read_bytes())
    except Exception as e:  # protobuf's DecodeError, but it is not exported in one place
        raise ModelLoadError(f"{path}: saved_model.pb is not a valid SavedModel ({e})") from e
    return sm


def _check_graph(path: Path, mg) -> None:
    """Refuse a MetaGraph with an op outside `ALLOWED_OPS` (SaveV2 / RestoreV2 inside TensorFlow's
    own saver functions only), a saver function called from elsewhere, or a call to a function the
    file lacks: in its top-level graph and in every function of its library."""
    library = {f.signature.name: f for f in mg.graph_def.library.function}
    saver_nodes = {n.split(":")[0] for n in (mg.saver_def.save_tensor_name, mg.saver_def.restore_op_name) if n}
    saver_fns = {name for node in mg.graph_def.node if node.name in saver_nodes for name in _called(node)}

    bad: dict[str, str] = {}  # op -> where it was first seen

    def check_nodes(nodes, where: str, allowed: frozenset, may_call_saver: bool) -> None:
        for node in nodes:
            calls = _called(node)
            if node.op in library:  # a node may call a library function by naming it as its op
                calls.append(node.op)
            elif node.op not in allowed:
                bad.setdefault(node.op, where)
            for name in calls:
                if name not in library:
                    raise _refuse(path, f"{where} calls a function {name!r} the file does not define")
                if name in saver_fns and not (may_call_saver and node.name in saver_nodes):
                    raise _refuse(path, f"{where} calls TensorFlow's checkpoint function {name!r}")

    check_nodes(mg.graph_def.node, "top-level graph", ALLOWED_OPS, may_call_saver=True)
    for name, fn in library.items():
        allowed = ALLOWED_OPS | SAVER_OPS if name in saver_fns else ALLOWED_OPS
        check_nodes(fn.node_def, f"function {name}", allowed, may_call_saver=False)
    if bad:
        ops = sorted(bad)
        shown = ", ".join(ops[:6]) + (f" and {len(ops) - 6} more" if len(ops) > 6 else "")
        raise _refuse(path, f"its graph uses op(s) keras-turbo does not run without --unsafe ({shown}; "
                            f"first in {bad[ops[0]]}): they may read or write files or run code")
