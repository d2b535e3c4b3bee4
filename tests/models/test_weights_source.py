"""Finding again the float weights a quantized file was made from, and never trusting an edited record."""

import shutil

import pytest

from lowbit.models import bundled_checkpoint
from lowbit.models.weights_source import describe_weights, find_weights


def test_bundled_weights_are_named_and_found_again():
    record = describe_weights(bundled_checkpoint("resnet20"), "resnet20")
    assert record["bundled"] == "resnet20" and "path" not in record  # the install folder is not recorded
    assert find_weights(record) == bundled_checkpoint("resnet20")


def test_a_checkpoint_is_found_only_while_it_holds_the_same_bytes(tmp_path):
    path = tmp_path / "net.safetensors"
    shutil.copy(bundled_checkpoint("resnet20"), path)
    record = describe_weights(path, "resnet20")
    assert record["path"] == str(path.resolve()) and find_weights(record) == path.resolve()
    with path.open("r+b") as f:  # retrained, or replaced by another file of the same name
        f.seek(100)
        f.write(b"\x00\x01")
    assert find_weights(record) is None
    path.unlink()
    assert find_weights(record) is None


@pytest.mark.parametrize("record", [
    None, [], "resnet20", {"bundled": "resnet20"}, {"sha256": 7, "bundled": "resnet20"},
    {"sha256": "0" * 64, "bundled": "resnet20"},  # right name, wrong digest
    {"sha256": "0" * 64, "bundled": "../../../etc/passwd"}, {"sha256": "0" * 64, "path": "/dev/zero"},
    {"sha256": "0" * 64, "path": "/"}, {"sha256": "0" * 64, "bundled": "resnet20", "path": "/tmp/x"},
    {"sha256": "0" * 64, "path": ["a"]},
])
def test_edited_records_lead_nowhere(record):
    assert find_weights(record) is None
