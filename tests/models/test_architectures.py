import pytest
import torch

from lowbit import LowbitError
from lowbit.models import MODEL_NAMES, build_model
from lowbit.models.registry import ARCHITECTURES, architecture, register


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_architecture_takes_the_data_it_is_built_for(name):
    """Built on the meta device (no memory, no download): stem and head follow the requested sizes."""
    entry = architecture(name)
    size = entry.input_shape[1] if entry.sized else 64
    with torch.device("meta"):
        model = build_model(name, num_classes=7, in_channels=1, image_size=size if entry.sized else None)
        out = model(torch.empty(2, 1, size, size))
    assert out.shape == (2, 7)
    assert model.lowbit_arch == {"name": name, "kwargs": {"num_classes": 7, "in_channels": 1,
                                                          "image_size": size if entry.sized else None}}


def test_unknown_names_and_missing_weights_are_clear_errors():
    with pytest.raises(LowbitError, match="choose one of: resnet20"):
        build_model("resnet21")
    with pytest.raises(LowbitError, match="no downloadable weights"):
        build_model("resnet20", pretrained=True)


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="model 'resnet20' registered twice"):
        register("resnet20", "again")(lambda *a: None)
    assert list(ARCHITECTURES) == list(MODEL_NAMES)
