"""Batch-norm folded into the convolution or linear layer before it, in a traced graph.

A norm layer that alone reads a layer's output is an affine map per channel, so it moves into that layer's
weight and bias (torch's ``fuse_conv_bn_eval`` / ``fuse_linear_bn_eval``) and leaves the graph: the layer is then
quantized with the norm inside it, as integer runtimes run it. timm's ``BatchNormAct`` keeps its activation in
the norm's place.
"""

from __future__ import annotations

from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from lowbit.layers import is_quantizable


def _batchnorm_tail(bn: nn.Module) -> nn.Module | None:
    """What remains of a norm layer once its affine part is folded: nothing for a plain BatchNorm, the
    activation for timm's BatchNormAct (a BatchNorm subclass that also applies dropout and an activation),
    or None (do not fold) for any other subclass."""
    if type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return nn.Identity()
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    if isinstance(act, nn.Module) and isinstance(drop, (nn.Identity, nn.Dropout, type(None))):
        return act
    return None


def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold every BatchNorm that directly follows a conv/linear (whose output it alone uses). Returns the count."""
    modules = dict(gm.named_modules())
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        src, bn = node.args[0], modules[node.target]
        tail = _batchnorm_tail(bn)
        if tail is None or not bn.track_running_stats or not isinstance(src, fx.Node) or src.op != "call_module" \
                or len(src.users) != 1:
            continue
        layer = modules[src.target]
        # a registered Conv2d subclass (timm's Conv2dSame) pads, then convolves: still linear in its weight
        if isinstance(layer, nn.Conv2d) and is_quantizable(layer) and isinstance(bn, nn.BatchNorm2d):
            fused = fuse_conv_bn_eval(layer.eval(), bn.eval())
        elif type(layer) is nn.Linear and isinstance(bn, nn.BatchNorm1d):
            fused = fuse_linear_bn_eval(layer.eval(), bn.eval())
        else:
            continue
        gm.add_submodule(src.target, fused)
        modules[src.target] = fused
        if isinstance(tail, nn.Identity):
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
        else:  # the activation takes the norm layer's place in the graph
            gm.add_submodule(node.target, tail)
            modules[node.target] = tail
        folded += 1
    gm.delete_all_unused_submodules()
    gm.recompile()
    return folded
