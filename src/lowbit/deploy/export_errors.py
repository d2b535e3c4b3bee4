"""One line for a model that PyTorch's ONNX exporter cannot take, naming the operation or the line of code.

torch.onnx wraps the real cause in exceptions whose first lines only say which of its three steps failed, with
terminal colour codes and advice meant for PyTorch's developers. The user needs two facts from that chain: an
operator with no ONNX translation (``aten.cummax``) or one whose translation refuses these inputs (attention on
5-d tensors), or the line of their ``forward`` where Python branches on a tensor's value (which no traced graph
can hold), and what to change.
"""

from __future__ import annotations

import re

from lowbit.errors import first_line

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NO_TRANSLATION = re.compile(r"No ONNX function found for <OpOverload\(op='([\w.]+)'")
_UNSUPPORTED_NODES = re.compile(r"Unsupported FX nodes: \{[^}]*?'(aten\.[\w.]+)'")
_TRANSLATING = re.compile(r"Error when translating node %\w+ : .*?target=torch\.ops\.([\w.]+)")
_USER_LINE = re.compile(r'File "([^"]+)", line (\d+), in \w+\n\s*(\S[^\n]*)')
_DATA_DEPENDENT = ("GuardOnDataDependentSymNode", "data-dependent")


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first (cycles cut)."""
    seen: list[BaseException] = []
    while exc is not None and all(exc is not other for other in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _operator_name(op: str) -> str:
    """``aten.cummax.default`` -> ``aten.cummax``: the overload suffix means nothing to a model's author."""
    parts = op.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else op


def explain_export_failure(exc: BaseException) -> str:
    """The reason ``exc`` (raised by ``torch.onnx.export``) gives, and the fix, in one line without colour codes."""
    chain = _chain(exc)
    texts = [_ANSI.sub("", str(link)) for link in chain]
    for text in texts:
        found = _NO_TRANSLATION.search(text) or _UNSUPPORTED_NODES.search(text)
        if found:
            op = _operator_name(found.group(1))
            return (f"operation {op} has no ONNX translation; replace it in the model with operations ONNX has "
                    "(or keep that part of the computation outside the exported model)")
    for text in texts:
        found = _TRANSLATING.search(text)
        if found:
            op, reason = _operator_name(found.group(1)), _ANSI.sub("", first_line(chain[-1]))
            return (f"torch.onnx could not translate operation {op} here ({reason}); replace it in the model with "
                    "operations ONNX export supports")
    if any(type(link).__name__ in _DATA_DEPENDENT or _DATA_DEPENDENT[1] in text
           for link, text in zip(chain, texts)):
        where = next((m for m in map(_USER_LINE.search, texts) if m), None)
        at = f" at {where.group(1)}:{where.group(2)} ({where.group(3).strip()})" if where else ""
        return (f"forward() branches on a tensor's value{at}, which a traced graph cannot hold; compute both "
                "branches and pick with torch.where, or move the decision out of forward()")
    root = chain[-1]
    return f"{type(root).__name__}: {_ANSI.sub('', first_line(root))}; make the model traceable by torch.export"
