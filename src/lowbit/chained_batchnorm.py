"""Batch-norm layers that an untraceable ``forward`` provably applies to a convolution's output, and nothing else.

A model that torch.fx cannot trace whole gives no graph of its own ``forward``, so nothing says that the output of
its stem convolution goes to the batch-norm after it and nowhere else: unfolded, that convolution runs in float
in an integer runtime. Its source code can say so. The methods its ``forward`` reaches (through ``self.name(...)``
and ``super().name(...)``) are read, and a (convolution, batch-norm) pair of its children is folded when every
use of either is one of

    y = self.bn(self.conv(...))                 # the batch-norm of the convolution, nested
    x = self.conv(...)                          # or in two consecutive statements that
    x = self.bn(x)                              # overwrite the convolution's output

Anything else (another use of either, code that reaches its children by name or by iteration, a method whose
source cannot be read) leaves the model as it is.
"""

from __future__ import annotations

import ast
import inspect
import textwrap

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# children reached through these cannot be followed (calls to torch's own methods, such as ``self.modules()``,
# already stop the reading)
DYNAMIC_ACCESS = {"_modules", "__dict__"}
# class attributes that hold data, not code
PLAIN_VALUES = (int, float, str, bool, bytes, tuple, type(None))
_MISSING = object()


def _method_tree(cls: type, name: str) -> tuple[ast.FunctionDef, type] | None:
    """The parsed method ``name`` as ``cls`` resolves it, with the class defining it (None: not readable or a
    method of torch itself, whose code reaches children generically)."""
    for owner in cls.__mro__:
        if name in vars(owner):
            if owner.__module__.startswith("torch.") or not inspect.isfunction(vars(owner)[name]):
                return None
            try:
                tree = ast.parse(textwrap.dedent(inspect.getsource(vars(owner)[name])))
            except (OSError, TypeError, SyntaxError):
                return None
            fn = tree.body[0]
            return (fn, owner) if isinstance(fn, ast.FunctionDef) else None
    return None


def reached_methods(cls: type) -> list[ast.FunctionDef] | None:
    """``forward`` and every method it reaches on ``self`` or ``super()``; None when one cannot be read."""
    seen: dict[tuple[type, str], ast.FunctionDef] = {}
    todo: list[tuple[type, str]] = [(cls, "forward")]
    while todo:
        start, name = todo.pop()
        found = _method_tree(start, name)
        if found is None:
            return None
        fn, owner = found
        if (owner, name) in seen:
            continue
        seen[owner, name] = fn
        if _self_escapes(fn):
            return None
        for node in ast.walk(fn):
            if (attr := _self_attr(node)) is not None:
                found_on_class = inspect.getattr_static(cls, attr, _MISSING)
                if inspect.isfunction(found_on_class):
                    todo.append((cls, attr))
                elif not (found_on_class is _MISSING or isinstance(found_on_class, PLAIN_VALUES)):
                    return None  # a property or other descriptor: code this reading does not follow
            elif isinstance(node, ast.Attribute) and _is_super(node.value):
                # super() and super(owner, self) both resolve after the class defining the method
                if len(node.value.args) not in (0, 2) or len(owner.__mro__) < 2:
                    return None
                todo.append((owner.__mro__[1], node.attr))
    return list(seen.values())


def _self_escapes(fn: ast.FunctionDef) -> bool:
    """Whether ``self`` is used other than as ``self.name`` or ``super()`` (passed to a function, aliased): then
    code this reading does not follow may use the children."""
    allowed = {id(n.value) for n in ast.walk(fn) if isinstance(n, ast.Attribute)}
    allowed |= {id(a) for n in ast.walk(fn) if _is_super(n) for a in n.args}  # super(Class, self)
    return any(isinstance(n, ast.Name) and n.id == "self" and id(n) not in allowed for n in ast.walk(fn))


def _is_super(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


def _self_attr(node: ast.AST) -> str | None:
    """``name`` for ``self.name``."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _called(node: ast.AST) -> str | None:
    """``name`` for a call ``self.name(one positional argument)``."""
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
        return _self_attr(node.func)
    return None


def _pairs_in(fn: ast.FunctionDef, convs: set[str], norms: set[str]) -> tuple[list[tuple[str, str]], set[int]]:
    """The (conv, bn) pairs ``fn`` chains, and the ids of the ``self.x`` nodes those chains account for."""
    pairs: list[tuple[str, str]] = []
    used: set[int] = set()
    for node in ast.walk(fn):
        if (bn := _called(node)) in norms and (conv := _called(node.args[0])) in convs:
            pairs.append((conv, bn))
            used |= {id(node.func), id(node.args[0].func)}
        for body in (getattr(node, f, None) for f in ("body", "orelse", "finalbody")):
            if not isinstance(body, list):
                continue
            for first, second in zip(body, body[1:]):
                if not (isinstance(first, ast.Assign) and isinstance(second, ast.Assign)):
                    continue
                if len(first.targets) != 1 or len(second.targets) != 1 or not isinstance(first.targets[0], ast.Name):
                    continue
                var = first.targets[0].id
                conv, bn = _called(first.value), _called(second.value)
                same = isinstance(second.targets[0], ast.Name) and second.targets[0].id == var
                if conv in convs and bn in norms and same and isinstance(second.value.args[0], ast.Name) \
                        and second.value.args[0].id == var:
                    pairs.append((conv, bn))
                    used |= {id(first.value.func), id(second.value.func)}
    return pairs, used


def chained_batchnorms(module: nn.Module) -> list[tuple[str, str]]:
    """The (convolution, batch-norm) children of ``module`` whose ``forward`` applies the batch-norm to the
    convolution's output and uses neither in any other way."""
    children = dict(module.named_children())
    convs = {n for n, m in children.items() if type(m) is nn.Conv2d}
    norms = {n for n, m in children.items() if type(m) is nn.BatchNorm2d and m.track_running_stats}
    if not convs or not norms:
        return []
    methods = reached_methods(type(module))
    if methods is None:
        return []
    pairs: set[tuple[str, str]] = set()
    accounted: set[int] = set()
    for fn in methods:
        for node in ast.walk(fn):
            if _self_attr(node) in DYNAMIC_ACCESS or (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                                                      and node.func.id in ("getattr", "vars", "setattr")):
                return []  # children reached by name or by iteration: their uses cannot be read
        found, used = _pairs_in(fn, convs, norms)
        pairs |= set(found)
        accounted |= used
    other_uses = {_self_attr(node) for fn in methods for node in ast.walk(fn)
                  if _self_attr(node) is not None and id(node) not in accounted}
    partners: dict[str, set[str]] = {}
    for conv, bn in pairs:
        partners.setdefault(conv, set()).add(bn)
        partners.setdefault(bn, set()).add(conv)
    return sorted((conv, bn) for conv, bn in pairs
                  if conv not in other_uses and bn not in other_uses and len(partners[conv]) == len(partners[bn]) == 1
                  and children[conv].out_channels == children[bn].num_features)


def fold_chained_batchnorms(model: nn.Module) -> int:
    """Fold the batch-norm layers that ``model``'s own ``forward`` provably applies to a convolution's output
    alone (see :func:`chained_batchnorms`) into that convolution. Returns the count."""
    pairs = chained_batchnorms(model)
    for conv, bn in pairs:
        setattr(model, conv, fuse_conv_bn_eval(getattr(model, conv).eval(), getattr(model, bn).eval()))
        setattr(model, bn, nn.Identity())
    return len(pairs)
