"""Where activation quantizers go in a traced graph: each node's kind, and the values an integer runtime would
requantize (see :mod:`lowbit.graph` for the placement rules this implements)."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from lowbit.layers import QuantLayer

RELU_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
RELU_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardtanh, torch.clamp}
RELU_METHODS = {"relu", "relu_", "clamp"}
PASSTHROUGH_MODULES = (nn.Flatten, nn.Unflatten, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Identity)
PASSTHROUGH_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze,
                         torch.unsqueeze, F.max_pool2d, F.adaptive_max_pool2d, F.dropout, operator.getitem,
                         torch.chunk, torch.split}
PASSTHROUGH_METHODS = {"flatten", "reshape", "view", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
                       "expand", "chunk", "split", "unbind", "__getitem__"}
PRODUCER_FUNCTIONS = {operator.add, operator.iadd, torch.add, torch.cat, torch.concat, torch.matmul,
                      operator.matmul, torch.bmm, operator.mul, torch.mul, F.scaled_dot_product_attention}
PRODUCER_METHODS = {"add", "add_", "matmul", "bmm", "mul"}
MATMUL_FUNCTIONS = {torch.matmul, operator.matmul, torch.bmm, F.scaled_dot_product_attention}
MATMUL_METHODS = {"matmul", "bmm"}
ADD_TARGETS = {operator.add, operator.iadd, torch.add, "add", "add_"}
NORM_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
NORM_FUNCTIONS = {F.layer_norm, F.group_norm, F.rms_norm}
# per node kind: the ReLU-like, shape-only, producing and matmul targets
TARGET_KINDS = {"call_function": (RELU_FUNCTIONS, PASSTHROUGH_FUNCTIONS, PRODUCER_FUNCTIONS, MATMUL_FUNCTIONS),
                "call_method": (RELU_METHODS, PASSTHROUGH_METHODS, PRODUCER_METHODS, MATMUL_METHODS)}


def node_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """Classify a node: 'weight', 'relu', 'pass', 'producer', 'matmul' or 'other'."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, QuantLayer):
            return "weight"
        if isinstance(m, RELU_MODULES):
            return "relu"
        if isinstance(m, PASSTHROUGH_MODULES):
            return "pass"
        return "other"
    if node.op in TARGET_KINDS:
        relu, passthrough, producer, matmul = TARGET_KINDS[node.op]
        if node.target in relu:
            return "relu"
        if node.target in passthrough:
            return "pass"
        if node.target in producer and _tensor_args(node) >= 2:
            return "matmul" if node.target in matmul else "producer"
    return "other"


SHAPE_METHODS = {"size", "dim", "numel"}


def _is_shape_value(node: fx.Node) -> bool:
    """True for a node computing a size, not a tensor: ``x.shape``, ``x.size()``, an index into one, or
    arithmetic on such values (``h * w`` in a reshape). It never gets an activation quantizer."""
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] == "shape"
    if node.op == "call_method" and node.target in SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target in (operator.getitem, operator.mul, operator.add, operator.sub,
                                                      operator.floordiv):
        inputs = node.all_input_nodes
        return bool(inputs) and all(_is_shape_value(a) for a in inputs)
    return False


def _tensor_args(node: fx.Node) -> int:
    """How many of the node's inputs are tensors (sizes taken from a tensor's shape do not count)."""
    return sum(not _is_shape_value(a) for a in node.all_input_nodes)


def _is_norm(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], NORM_MODULES)
    return node.op == "call_function" and node.target in NORM_FUNCTIONS


def _reaches_only_norms_and_adds(node: fx.Node, kinds: dict[fx.Node, str], modules: dict[str, nn.Module]) -> bool:
    """True when every reader of ``node``'s value, through shape-only operations, is a normalization layer or an
    add: a transformer's residual stream, which no multiply-accumulate reads before a norm re-scales it."""
    if not node.users:
        return False
    for user in node.users:
        if _is_shape_value(user):  # x.shape: reads no value
            continue
        if kinds[user] == "pass":
            if not _reaches_only_norms_and_adds(user, kinds, modules):
                return False
        elif not (_is_norm(user, modules) or (user.op in TARGET_KINDS and user.target in ADD_TARGETS)):
            return False
    return True


def requant_points(gm: fx.GraphModule, kinds: dict[fx.Node, str], modules: dict[str, nn.Module],
                    float_residual_stream: bool = False) -> list[fx.Node]:
    """The nodes whose outputs get an activation quantizer, in graph order (``kinds``: each node's kind). With
    ``float_residual_stream``, adds whose sums reach only norms and further adds get none."""
    points: set[fx.Node] = set()

    def after_relu(n: fx.Node) -> fx.Node:
        users = list(n.users)
        return users[0] if len(users) == 1 and kinds[users[0]] == "relu" else n

    for n in gm.graph.nodes:
        if float_residual_stream and kinds[n] == "producer" and n.target in ADD_TARGETS \
                and _reaches_only_norms_and_adds(n, kinds, modules):
            continue
        if (n.op == "placeholder" and not n.args) or kinds[n] in ("weight", "producer", "matmul"):  # args: a default
            points.add(after_relu(n))
    for n in gm.graph.nodes:  # every multiply-accumulate must read quantized inputs
        if kinds[n] in ("weight", "matmul"):
            for arg in n.all_input_nodes:
                src = arg
                while kinds[src] == "pass" and src.all_input_nodes and src not in points:
                    src = src.all_input_nodes[0]
                if src not in points and src.op != "get_attr" and not (src.op == "placeholder" and src.args):
                    points.add(src)
    return [n for n in gm.graph.nodes if n in points and n.op != "output"]


def weight_consumers(node: fx.Node, modules: dict[str, nn.Module]) -> list[str]:
    """The weight layers that read ``node``'s value, looking through shape-only operations (a flatten before
    the classifier), so that an override of a layer reaches the quantizer of its input."""
    found: list[str] = []
    for user in node.users:
        kind = node_kind(user, modules)
        if kind == "weight":
            found.append(user.target)
        elif kind == "pass":
            found += weight_consumers(user, modules)
    return found


def feeds_residual_add(node: fx.Node, kinds: dict[fx.Node, str]) -> bool:
    """True for a weight layer's own output (no ReLU after it) read only by adds: a residual branch."""
    return kinds[node] == "weight" and bool(node.users) and all(
        u.op in ("call_function", "call_method") and u.target in ADD_TARGETS for u in node.users)
