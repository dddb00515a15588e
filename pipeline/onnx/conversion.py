"""Keras model -> ONNX model of the contract (tf2onnx), with the graph rewrites that make the
convolutional encoders fast in ONNX Runtime.

    to_onnx(model, opset, metadata) -> onnx.ModelProto: input `x`, outputs `prediction`,
    `attention` and, where the Keras model has them, `logit` and `contribution`; dynamic `batch`
    (and `time` for sequence models), checked by onnx.checker.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import tensorflow as tf
import tf2onnx

from pipeline.core.contract import BATCH_DIM, CONTRIBUTION_NAME, INPUT_NAME, LOGIT_NAME, OUTPUT_NAMES, TIME_DIM
from pipeline.models import batch_norm_folded_copy


def _input_signature(model) -> tuple[tf.TensorSpec]:
    """[batch, features] or [batch, time, features], with batch (and time if the model allows)
    left dynamic."""
    shape = tuple(model.input.shape)
    return (tf.TensorSpec(shape, tf.float32, name=INPUT_NAME),)


def output_names(model) -> tuple[str, ...]:
    """The contract's outputs a Keras model has, in the contract's order."""
    return tuple(name for name in (*OUTPUT_NAMES, LOGIT_NAME, CONTRIBUTION_NAME) if name in model.output)


def _name_dynamic_dims(onnx_model: onnx.ModelProto, sequence: bool) -> None:
    """Give tf2onnx's anonymous dims the contract's names: batch, and time for sequence models."""

    def rename(value_info, names: dict[int, str]) -> None:
        dims = value_info.type.tensor_type.shape.dim
        for axis, name in names.items():
            if axis < len(dims) and not dims[axis].HasField("dim_value"):
                dims[axis].dim_param = name

    rename(onnx_model.graph.input[0], {0: BATCH_DIM, **({1: TIME_DIM} if sequence else {})})
    for output in onnx_model.graph.output:
        over_time = sequence and output.name in ("attention", CONTRIBUTION_NAME)
        rename(output, {0: BATCH_DIM, **({1: TIME_DIM} if over_time else {})})


def _order_outputs(onnx_model: onnx.ModelProto, names: tuple[str, ...]) -> None:
    """Outputs in the contract's order (prediction, attention, logit, contribution); consumers
    still bind by name."""
    by_name = {o.name: o for o in onnx_model.graph.output}
    ordered = [by_name[name] for name in names]
    del onnx_model.graph.output[:]
    onnx_model.graph.output.extend(ordered)


def _is_zero_constant(name: str, producers: dict, initializers: dict) -> bool:
    if name in initializers:
        return not np.any(onnx.numpy_helper.to_array(initializers[name]))
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        return not np.any(onnx.numpy_helper.to_array(node.attribute[0].t))
    return False


def _drop_zero_initial_states(onnx_model: onnx.ModelProto) -> None:
    """Keras builds an LSTM's zero initial states from the batch size at run time (Shape, Expand,
    Unsqueeze nodes); zero is the ONNX LSTM default, so drop those inputs and the nodes that only
    fed them. Outputs are identical; batch-1 latency drops."""
    graph = onnx_model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type != "LSTM":
            continue
        for index in (5, 6):  # initial_h, initial_c
            if index >= len(node.input) or not node.input[index]:
                continue
            source = producers.get(node.input[index])
            while source is not None and source.op_type in ("Unsqueeze", "Identity", "Cast"):
                source = producers.get(source.input[0])
            if (
                source is not None
                and source.op_type == "Expand"
                and _is_zero_constant(source.input[0], producers, initializers)
            ):
                node.input[index] = ""
    _prune_unused(graph)


def _readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """The nodes that read each tensor name."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _constant_axes(node: onnx.NodeProto, initializers: dict) -> tuple[int, ...] | None:
    """The axes of a Squeeze or Unsqueeze given as an initializer (None where they are not)."""
    source = initializers.get(node.input[1]) if len(node.input) > 1 else None
    return None if source is None else tuple(onnx.numpy_helper.to_array(source).ravel().tolist())


def _relu_before_squeeze(onnx_model: onnx.ModelProto) -> None:
    """tf2onnx writes each Conv1D as Unsqueeze -> 2-D Conv -> Squeeze, then its bias Add and ReLU,
    where no runtime fuses them. Each Squeeze -> ReLU becomes ReLU -> Squeeze, each Squeeze -> Add
    of a constant becomes Add (the constant given the squeezed axes) -> Squeeze, and a Squeeze
    whose only reader is an Unsqueeze of the same axes (between two blocks) goes with it: ONNX
    Runtime then fuses bias and ReLU into every convolution and, in int8_qdq, passes int8
    activations from one convolution to the next. The outputs are unchanged."""
    graph = onnx_model.graph
    squeezes = [node for node in graph.node if node.op_type == "Squeeze"]
    if not squeezes:
        return
    initializers = {i.name: i for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    ranks = {
        info.name: len(info.type.tensor_type.shape.dim)
        for info in onnx.shape_inference.infer_shapes(onnx_model).graph.value_info
    }
    readers = _readers(graph)

    axes = functools.partial(_constant_axes, initializers=initializers)

    def constant_before_squeeze(add, squeeze) -> str | None:
        """The Add's other operand reshaped for the unsqueezed tensor, as a new initializer."""
        other = [name for name in add.input if name != squeeze.output[0]]
        rank, squeezed_axes = ranks.get(squeeze.output[0]), axes(squeeze)
        if len(other) != 1 or other[0] not in initializers or rank is None or squeezed_axes is None:
            return None
        value = onnx.numpy_helper.to_array(initializers[other[0]])
        if value.ndim > rank:
            return None
        value = value.reshape((1,) * (rank - value.ndim) + value.shape)
        for axis in sorted(a % (rank + len(squeezed_axes)) for a in squeezed_axes):
            value = np.expand_dims(value, axis)
        name = f"{other[0]}/unsqueezed"
        graph.initializer.append(onnx.numpy_helper.from_array(value, name))
        initializers[name] = graph.initializer[-1]
        return name

    def swap(squeeze, reader, reader_inputs):
        """squeeze -> reader  =>  reader (on the unsqueezed tensor) -> squeeze. The two nodes trade
        places in the node list, which keeps it in topological order; returns the moved Squeeze."""
        squeezed, output = squeeze.output[0], reader.output[0]
        moved_reader, moved_squeeze = onnx.NodeProto(), onnx.NodeProto()
        moved_reader.CopyFrom(reader)
        moved_reader.input[:], moved_reader.output[0] = reader_inputs, f"{output}/before_squeeze"
        moved_squeeze.CopyFrom(squeeze)
        moved_squeeze.input[0], moved_squeeze.output[0] = moved_reader.output[0], output
        squeeze.CopyFrom(moved_reader)
        reader.CopyFrom(moved_squeeze)
        ranks[output] = ranks.get(squeezed)
        _drop_value_info(graph, {squeezed})
        return reader

    for squeeze in squeezes:
        while len(only := readers.get(squeeze.output[0], [])) == 1 and squeeze.output[0] not in graph_outputs:
            reader = only[0]
            if reader.op_type == "Relu":
                squeeze = swap(squeeze, reader, [squeeze.input[0]])
            elif reader.op_type == "Add" and (constant := constant_before_squeeze(reader, squeeze)) is not None:
                squeeze = swap(squeeze, reader, [squeeze.input[0], constant])
            else:
                if (
                    reader.op_type == "Unsqueeze"
                    and reader.output[0] not in graph_outputs
                    and axes(squeeze) is not None
                    and axes(squeeze) == axes(reader)
                ):
                    for node in readers.pop(reader.output[0], []):  # both left to _prune_unused
                        node.input[:] = [squeeze.input[0] if name == reader.output[0] else name for name in node.input]
                    _drop_value_info(graph, {squeeze.output[0], reader.output[0]})
                break
    _prune_unused(graph)


def _padding_mask_in_conv_layout(onnx_model: onnx.ModelProto) -> None:
    """Between two Conv1D blocks of a padded series, tf2onnx writes the padding mask's product as
    Squeeze -> Transpose [0, 2, 1] -> Mul(mask [batch, time, 1]) -> Unsqueeze -> Transpose
    [0, 3, 1, 2]: out of the convolution's [batch, channels, 1, time] layout and back. Each such
    chain becomes one Mul of the convolution's output with the mask as [batch, 1, 1, time]
    (transposed once per mask). The outputs are unchanged; ONNX Runtime saves two transposes per
    block."""
    graph = onnx_model.graph
    initializers = {i.name: i for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    shapes = {
        info.name: [d.dim_value or d.dim_param for d in info.type.tensor_type.shape.dim]
        for info in onnx.shape_inference.infer_shapes(onnx_model).graph.value_info
    }
    producers = {name: node for node in graph.node for name in node.output}
    readers = _readers(graph)

    def attribute(node, name):
        return next((tuple(a.ints) for a in node.attribute if a.name == name), None)

    axes = functools.partial(_constant_axes, initializers=initializers)

    def sole_producer(name, op_type):
        """The node of `op_type` that makes `name`, if `name` has no other reader than one node."""
        node = producers.get(name)
        alone = len(readers.get(name, [])) == 1 and name not in graph_outputs
        return node if node is not None and node.op_type == op_type and alone else None

    masks_in_conv_layout: dict[str, str] = {}
    for back in [n for n in graph.node if n.op_type == "Transpose" and attribute(n, "perm") == (0, 3, 1, 2)]:
        unsqueeze = sole_producer(back.input[0], "Unsqueeze")
        mul = unsqueeze and axes(unsqueeze) in ((1,), (-3,)) and sole_producer(unsqueeze.input[0], "Mul")
        if not mul:
            continue
        out = [(name, sole_producer(name, "Transpose")) for name in mul.input]
        out = [(name, node) for name, node in out if node is not None and attribute(node, "perm") == (0, 2, 1)]
        squeeze = len(out) == 1 and sole_producer(out[0][1].input[0], "Squeeze")
        mask = next(name for name in mul.input if name != out[0][0]) if out else None
        if not squeeze or axes(squeeze) != (2,) or len(shapes.get(mask, [])) != 3 or shapes[mask][2] != 1:
            continue
        if mask not in masks_in_conv_layout:
            masks_in_conv_layout[mask] = f"{mask}/conv_layout"
            axes_name = f"{mask}/conv_layout_axes"
            graph.initializer.append(onnx.numpy_helper.from_array(np.array([2], np.int64), axes_name))
            position = list(graph.node).index(producers[mask]) + 1 if mask in producers else 0
            graph.node.insert(
                position,
                onnx.helper.make_node("Unsqueeze", [f"{mask}/time_last", axes_name], [masks_in_conv_layout[mask]]),
            )
            graph.node.insert(
                position, onnx.helper.make_node("Transpose", [mask], [f"{mask}/time_last"], perm=[0, 2, 1])
            )
        back.CopyFrom(
            onnx.helper.make_node(
                "Mul", [squeeze.input[0], masks_in_conv_layout[mask]], list(back.output), name=f"{mul.name}/conv_layout"
            )
        )
        _drop_value_info(graph, {squeeze.output[0], out[0][0], mul.output[0], unsqueeze.output[0]})
    _prune_unused(graph)


def _drop_value_info(graph: onnx.GraphProto, names: set[str]) -> None:
    kept = [info for info in graph.value_info if info.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def _prune_unused(graph: onnx.GraphProto) -> None:
    """Remove nodes (and initializers) no graph output depends on."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
            for attribute in node.attribute:  # Loop / If bodies read outer names
                for subgraph in [attribute.g, *attribute.graphs]:
                    needed.update(name for sub in subgraph.node for name in sub.input if name)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    unused = [i for i in graph.initializer if i.name not in needed]
    for initializer in unused:
        graph.initializer.remove(initializer)


def to_onnx(model, opset: int, metadata: dict[str, str] | None = None, fuse_blocks: bool = True) -> onnx.ModelProto:
    """Convert a two-output Keras model to a checked ONNX model that follows the contract. With
    `fuse_blocks` (always, but for the benchmark's comparison) a convolutional encoder's
    BatchNormalization is folded into its convolutions, bias and ReLU moved next to them, and the
    padding mask applied in the convolutions' layout."""
    signature = _input_signature(model)
    names = output_names(model)
    if fuse_blocks:
        model = batch_norm_folded_copy(model)

    @tf.function(input_signature=signature)
    def serve(x):
        outputs = model(x, training=False)
        return {name: tf.identity(outputs[name], name=name) for name in names}

    onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=opset)
    _drop_zero_initial_states(onnx_model)
    if fuse_blocks:
        _relu_before_squeeze(onnx_model)
        _padding_mask_in_conv_layout(onnx_model)
    _order_outputs(onnx_model, names)
    _name_dynamic_dims(onnx_model, sequence=len(signature[0].shape) == 3)
    onnx_model.producer_name = "attention-pipeline"
    for key, value in (metadata or {}).items():
        onnx_model.metadata_props.add(key=key, value=str(value))
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model
