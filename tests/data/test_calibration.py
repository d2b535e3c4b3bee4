import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lowbit import LowbitError
from lowbit.data import calibration_batches, labelled_batches


def test_tensor_is_taken_in_order_and_batched():
    x = torch.arange(100.0).view(100, 1)
    batches = calibration_batches(x, n_images=70, batch_size=32)
    assert [len(b) for b in batches] == [32, 32, 6]
    assert torch.equal(torch.cat(batches), x[:70])


def test_dataset_subset_is_seeded_and_labels_dropped():
    ds = TensorDataset(torch.randn(500, 3), torch.randint(0, 2, (500,)))
    a = torch.cat(calibration_batches(ds, 64, 16, seed=1))
    b = torch.cat(calibration_batches(ds, 64, 16, seed=1))
    c = torch.cat(calibration_batches(ds, 64, 16, seed=2))
    assert a.shape == (64, 3) and torch.equal(a, b) and not torch.equal(a, c)


def test_loader_of_pairs_is_consumed_until_enough():
    ds = TensorDataset(torch.randn(100, 2), torch.zeros(100))
    batches = calibration_batches(DataLoader(ds, batch_size=30), n_images=45, batch_size=45)
    assert torch.equal(torch.cat(batches), ds.tensors[0][:45])


@pytest.mark.parametrize("data,pattern", [
    ([], "empty"),
    (torch.empty(0, 3), "empty"),
    ([["a", "b"]], "found str"),
    (torch.tensor([[1.0, float("inf")]]), "NaN or Inf"),
    (torch.zeros(4, 3, dtype=torch.uint8), "float inputs"),
])
def test_bad_calibration_data(data, pattern):
    with pytest.raises(LowbitError, match=pattern):
        calibration_batches(data)


def test_labelled_batches_need_labels():
    x, y = torch.randn(10, 2), torch.arange(10)
    assert sum(len(b[0]) for b in labelled_batches((x, y), 4)) == 10
    with pytest.raises(LowbitError, match="input, label"):
        list(labelled_batches(TensorDataset(x), 4))
