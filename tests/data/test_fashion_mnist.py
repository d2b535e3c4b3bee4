import gzip
import struct

import numpy as np
import pytest

from lowbit import LowbitError
from lowbit.data.fashion_mnist import load_fashion_mnist


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_split(folder, n=20, prefix="t10k"):
    rng = np.random.default_rng(0)
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))


def test_reads_idx_files_from_data_dir(tmp_path):
    make_split(tmp_path)
    ds = load_fashion_mnist("test", tmp_path, download=False)
    x, y = ds.tensors
    assert x.shape == (20, 1, 28, 28) and y.shape == (20,) and int(y.max()) < 10


def test_missing_folder_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("lowbit.data.fashion_mnist.SYSTEM_DIR", tmp_path / "absent")
    monkeypatch.delenv("LOWBIT_DATA", raising=False)
    with pytest.raises(LowbitError, match="dataset-fashion-mnist"):
        load_fashion_mnist("test", tmp_path / "nothing", download=False)


def test_corrupt_file_is_a_clear_error(tmp_path):
    make_split(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"broken")
    with pytest.raises(LowbitError, match="cannot read IDX"):
        load_fashion_mnist("test", tmp_path, download=False)


def test_real_dataset_shapes_and_normalization():
    x, y = load_fashion_mnist("train", download=False).tensors
    assert x.shape == (60000, 1, 28, 28) and y.shape == (60000,)
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01
    assert load_fashion_mnist("test", download=False).tensors[0].shape == (10000, 1, 28, 28)
