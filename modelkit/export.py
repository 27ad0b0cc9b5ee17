"""Export the student to ONNX with optimum, then quantise it to int8.

optimum's Qwen3 ONNX config expresses the decoder with its KV cache; we
subclass it only to add the ``features`` output (pooled hidden state), which
the student's forward returns next to the logits. One graph serves the prefill
(empty past) and every decode step. onnxruntime's transformer optimizer then
fuses RMSNorm, residual + RMSNorm and the rotary embeddings into single
contrib ops: a model this small spends most of a decode step in per-node
overhead, not arithmetic, so fewer nodes is faster. Quantisation is
onnxruntime's dynamic int8 quantisation of the ``MatMul`` weights (not the
output projection).

A graph over :data:`EXTERNAL_DATA_BYTES` of weights (a 0.6B-parameter student is ~2.4 GB in fp32,
over protobuf's 2 GB limit on one message) is written with its weights in one external data file
beside it, ``<graph>.data``, at every step: export, pre-processing, quantisation. The bundle lists
and signs that file like any other, and onnxruntime finds it next to the graph.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model
from optimum.exporters.onnx import onnx_export_from_model
from optimum.exporters.onnx.model_configs import Qwen3OnnxConfig
from transformers import Qwen3ForCausalLM

from edgecloud.modelkit.arithmetic.student import with_features

__all__ = [
    "FEATURES_OUTPUT",
    "export_student",
    "external_data_file",
    "onnx_io",
    "quantize_student",
    "save_graph",
    "weight_bytes",
]

log = logging.getLogger(__name__)

FEATURES_OUTPUT = "features"
OPSET = 18
#: Rows kept in the fused rotary embeddings' cos/sin caches (onnxruntime's fusion writes 131,072,
#: 16 MiB for this student). Enough for the longest query the cloud accepts (8192 characters; a
#: tokenizer rarely gives more tokens than characters) plus the edge's longest answer.
ROTARY_POSITIONS = 8192 + 512
EXTERNAL_DATA_BYTES = 1536 * 2**20
"""Weights above this go to an external data file: protobuf refuses messages over 2 GiB, and the
graph's own nodes and attributes need room besides the weights."""


class EdgeStudentOnnxConfig(Qwen3OnnxConfig):
    """optimum's Qwen3 decoder config plus the pooled ``features`` output."""

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        common = OrderedDict(super().outputs)
        common[FEATURES_OUTPUT] = {0: "batch_size"}
        return common


def export_student(model: Qwen3ForCausalLM, out_file: Path) -> Path:
    """Write the fp32 ONNX decoder (with past) of ``model`` to ``out_file``."""
    model = with_features(model).eval()
    config = EdgeStudentOnnxConfig(
        model.config, task="text-generation-with-past", use_past=True, use_past_in_inputs=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        onnx_export_from_model(
            model,
            tmp,
            opset=OPSET,
            task="text-generation-with-past",
            custom_onnx_configs={"model": config},
            do_validation=True,
        )
        produced = Path(tmp) / "model.onnx"
        if not produced.exists():
            raise RuntimeError(f"optimum produced no model.onnx (got {sorted(p.name for p in Path(tmp).iterdir())})")
        graph = _fuse(onnx.load(str(produced), load_external_data=True), model.config)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        save_graph(graph, out_file)
    return out_file


def weight_bytes(graph: onnx.ModelProto) -> int:
    """Bytes of the graph's initializers, wherever they are held."""
    total = 0
    for tensor in graph.graph.initializer:
        count = 1
        for dim in tensor.dims:
            count *= dim
        total += count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return total


def external_data_file(graph_file: Path) -> Path:
    """Where a graph written by :func:`save_graph` keeps its weights when they are external."""
    return graph_file.with_name(graph_file.name + ".data")


def save_graph(graph: onnx.ModelProto, out_file: Path, *, external: bool | None = None) -> None:
    """Write ``graph``: in one file, or (``external``; default: over :data:`EXTERNAL_DATA_BYTES`) with its
    weights in :func:`external_data_file`."""
    if external is None:
        external = weight_bytes(graph) > EXTERNAL_DATA_BYTES
    data = external_data_file(out_file)
    data.unlink(missing_ok=True)
    if external:
        log.info("%s: %.2f GB of weights, written to %s", out_file.name, weight_bytes(graph) / 1e9, data.name)
    onnx.save_model(
        graph, str(out_file), save_as_external_data=external, all_tensors_to_one_file=True, location=data.name
    )


def has_external_data(graph_file: Path) -> bool:
    return external_data_file(graph_file).exists()


def _fuse(graph: onnx.ModelProto, config) -> onnx.ModelProto:
    """Fuse the graph with onnxruntime's optimizer for this model type (no-op for a type it does not know)."""
    model_type = config.model_type
    if model_type not in MODEL_TYPES:
        log.info("onnxruntime has no fusions for model type %r; graph left as exported", model_type)
        return graph
    before = len(graph.graph.node)
    # opt_level 0: only the portable transformer fusions, no hardware-specific rewrites;
    # the session applies its own graph optimisations on the device at load.
    fused = optimize_model(
        graph,
        model_type=model_type,
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        optimization_options=FusionOptions(model_type),
        opt_level=0,
        use_gpu=False,
    ).model
    _trim_rotary_caches(fused, ROTARY_POSITIONS)
    log.info("onnxruntime fusions (%s): %d -> %d nodes", model_type, before, len(fused.graph.node))
    return fused


def _trim_rotary_caches(graph: onnx.ModelProto, rows: int) -> None:
    """Cut the cos/sin caches of every ``RotaryEmbedding`` node to ``rows`` positions, in place."""
    caches = {name for node in graph.graph.node if node.op_type == "RotaryEmbedding" for name in node.input[2:4]}
    for index, tensor in enumerate(graph.graph.initializer):
        if tensor.name in caches and tensor.dims[0] > rows:
            trimmed = numpy_helper.to_array(tensor)[:rows]
            graph.graph.initializer[index].CopyFrom(numpy_helper.from_array(trimmed, tensor.name))


def quantize_student(fp32_file: Path, int8_file: Path) -> Path:
    """Dynamic int8 quantisation (weights int8 per channel, activations at run time).

    onnxruntime's recommended pre-processing (shape inference and basic graph
    optimisation) runs first: it halves the node count of the exported graph,
    which makes the quantised file smaller and faster to run.
    """
    external = has_external_data(fp32_file)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "model.prepared.onnx"
        quant_pre_process(
            str(fp32_file),
            str(prepared),
            skip_symbolic_shape=True,
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            external_data_location=external_data_file(prepared).name,
        )
        staged = Path(tmp) / int8_file.name
        quantize_dynamic(
            str(prepared),
            str(staged),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            # The output projection is tiny (vocab x hidden) but its error lands
            # straight on the logits, where it flips near-tied tokens: keep it fp32.
            nodes_to_exclude=_logits_producers(prepared),
            # Fused contrib ops (com.microsoft) are unknown to ONNX shape inference: their
            # outputs have no declared type. They are all float here.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            use_external_data_format=external,
        )
        shutil.copyfile(staged, int8_file)
        external_data_file(int8_file).unlink(missing_ok=True)
        if external_data_file(staged).exists():  # named after the graph's file: it still matches
            shutil.copyfile(external_data_file(staged), external_data_file(int8_file))
    return int8_file


def _logits_producers(path: Path) -> list[str]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return [node.name for node in graph.node if "logits" in node.output]


def onnx_io(path: Path) -> dict[str, list[dict[str, object]]]:
    """Names, element types and shapes of a graph's inputs and outputs."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values) -> list[dict[str, object]]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            out.append(
                {"name": value.name, "dtype": onnx.TensorProto.DataType.Name(tensor.elem_type).lower(), "shape": dims}
            )
        return out

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}
