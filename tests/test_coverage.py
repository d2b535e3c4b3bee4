import torch
from torch import nn

import lowbit
from lowbit.coverage import coverage
from lowbit.io.lowbit_file import read_record


class TokenNet(nn.Module):
    """An embedding (left float by lowbit) and a 1-d convolution before a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 16)
        self.conv = nn.Conv1d(16, 16, 3)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.emb(x).transpose(1, 2)).mean(-1))


def test_layers_left_float_are_counted_by_kind():
    q = lowbit.quantize(TokenNet(), None, weights_bits=4, activation_bits=None)
    share = coverage(q)
    assert share.unquantized == {"Embedding": 1600}
    assert share.float_params == 1600 + 16 + 4  # plus the conv and linear biases
    assert "Embedding (1,600)" in share.describe() and "Conv1d" in share.describe()  # named among those quantized


def test_a_fully_quantized_model_keeps_only_biases_and_norms_float(residual_net, images, tmp_path):
    q = lowbit.quantize(residual_net, images, weights_bits=4, activation_bits=8)
    share = coverage(q)
    biases_and_norms = sum(p.numel() for n, p in q.named_parameters() if n.endswith("bias"))
    assert share.unquantized == {} and share.float_params == biases_and_norms
    assert read_record(lowbit.save(q, tmp_path / "m.lowbit")).coverage == share


def test_weights_read_as_tensors_are_named_by_their_path():
    """A layer whose weight forward() passes to F.linear itself is not swapped; the report names that weight
    (torch.fx keeps it in a bare holder module, whose type name would say nothing)."""

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.proj = nn.Linear(4, 4)

        def forward(self, x):
            return torch.nn.functional.linear(self.conv(x).mean((2, 3)), self.proj.weight, self.proj.bias)

    qmodel = lowbit.quantize(Functional().eval(), torch.rand(8, 3, 8, 8), weights_bits=8, activation_bits=8)
    assert coverage(qmodel).unquantized == {
        "parameters forward() reads directly (e.g. proj.weight)": 16}
