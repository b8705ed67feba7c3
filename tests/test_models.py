import pytest
import torch

from tunesmith.trainables.config import MODELS, OPTIMIZERS, ConfigError, ModelConfig, TrainerConfig
from tunesmith.trainables.models import build_model, list_models
from tunesmith.trainables.optimizers import build_optimizer, current_momentum, list_optimizers, set_lr_momentum


def test_registries_match_the_names_specs_validate_against():
    assert sorted(MODELS) == list_models()
    assert sorted(OPTIMIZERS) == list_optimizers()
    from tunesmith.trainables.config import DATASETS
    from tunesmith.trainables.data import list_datasets
    assert sorted(DATASETS) == list_datasets()


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_output_shape(name, shape):
    model = build_model(ModelConfig(name=name), shape, 7)
    model.eval()
    out = model(torch.zeros(2, *shape))
    assert out.shape == (2, 7)


def test_small_cnn_width_and_depth():
    model = build_model(ModelConfig(name="small_cnn", width=8, depth=3), (1, 28, 28), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32]


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="model.name"):
        build_model(_bad_model(), (1, 8, 8), 10)


def _bad_model():
    m = ModelConfig()
    object.__setattr__(m, "name", "vgg")
    return m


@pytest.mark.parametrize("name", list_optimizers())
def test_optimizers_take_schedule_values(name):
    model = build_model(ModelConfig(), (1, 8, 8), 10)
    opt = build_optimizer(model, TrainerConfig(optimizer=name), 0.1)
    set_lr_momentum(opt, 0.05, 0.85)
    assert all(g["lr"] == 0.05 for g in opt.param_groups)
    if name == "rprop":
        assert current_momentum(opt) is None
    else:
        assert current_momentum(opt) == pytest.approx(0.85)


def test_no_weight_decay_on_biases_and_norms():
    model = build_model(ModelConfig(), (1, 8, 8), 10)
    opt = build_optimizer(model, TrainerConfig(weight_decay=1e-3), 0.1)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 1e-3 and all(p.ndim > 1 for p in decayed["params"])
    assert plain["weight_decay"] == 0 and all(p.ndim <= 1 for p in plain["params"])


@pytest.mark.parametrize("name", list_optimizers())
def test_weight_decay_reaches_every_optimizer(name):
    """One step on a zero loss: only the decay moves the weights, towards zero."""
    torch.manual_seed(0)
    results = {}
    for decay in (0.0, 0.1):
        model = torch.nn.Linear(4, 3)
        with torch.no_grad():
            model.weight.fill_(1.0)
        opt = build_optimizer(model, TrainerConfig(optimizer=name, weight_decay=decay, momentum=0.9), 0.01)
        (model.weight.sum() * 0.0 + model.bias.sum() * 0.0).backward()
        opt.step()
        results[decay] = model.weight.detach().clone()
    assert torch.all(results[0.1] < results[0.0]), name
