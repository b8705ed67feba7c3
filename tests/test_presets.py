import pytest

from tunesmith.orchestrator import spec as spec_mod
from tunesmith.orchestrator.cli import main
from tunesmith.search_spaces.presets import PRESETS, list_presets
from tunesmith.trainables.config import ConfigError


def _space(s):
    return {d.key: d.to_spec() for d in s.plan.space}


def test_preset_contents_follow_smith():
    assert PRESETS["momentum"].space == {"momentum": {"choice": [0.99, 0.97, 0.95, 0.9]}}
    assert PRESETS["momentum"].settings["schedule"] == "constant"
    assert PRESETS["weight_decay_deep"].space["weight_decay"] == {"grid": [1e-3, 1e-4, 1e-5, 0.0]}
    assert PRESETS["weight_decay_shallow"].space["weight_decay"] == {"grid": [1e-2, 1e-3, 1e-4]}
    assert PRESETS["lr_decades"].space["lr"] == {"grid": [0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7]}
    assert PRESETS["lr_decades"].settings == {"schedule": "step"}
    band = PRESETS["lr_band"].settings
    assert (band["schedule"], band["max_momentum"], band["min_momentum"]) == ("one_cycle", 0.95, 0.85)
    for p in PRESETS.values():
        assert p.summary and p.source


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_validates_in_a_spec(name):
    raw = {"search": {"presets": [name], "lr_band": [0.01, 0.1]}}
    s = spec_mod.from_dict(raw)
    assert s.plan.presets == (name,)
    for key in PRESETS[name].space:
        assert key in _space(s)


def test_lr_band_preset_uses_the_band_and_sets_1cycle():
    s = spec_mod.from_dict({"search": {"presets": ["lr_band"], "lr_band": [0.02, 0.2]}})
    assert _space(s)["lr"] == {"loguniform": [0.02, 0.2]}
    t = s.train.trainer
    assert (t.schedule, t.cycle_momentum, t.max_momentum, t.min_momentum) == ("one_cycle", True, 0.95, 0.85)


def test_spec_dimension_overrides_the_preset():
    s = spec_mod.from_dict({"search": {"presets": ["weight_decay_deep"],
                                       "space": {"weight_decay": {"grid": [5e-4, 0.0]}}}})
    assert _space(s)["weight_decay"] == {"grid": [5e-4, 0.0]}


@pytest.mark.parametrize("raw,message", [
    ({"trainer": {"optimizer": "adam"}, "search": {"presets": ["momentum"]}}, "beta1 is not that momentum"),
    ({"trainer": {"optimizer": "rprop"}, "search": {"presets": ["momentum"]}}, "no momentum"),
    ({"search": {"presets": ["lr_band"]}}, "search.lr_band = None"),
    ({"trainer": {"schedule": "step"}, "search": {"presets": ["lr_band"], "lr_band": [0.01, 0.1]}},
     "trainer.schedule = 'step': preset lr_band needs 'one_cycle'"),
    ({"search": {"presets": ["nope"]}}, "unknown preset"),
    ({"search": {"presets": ["lr_band"], "lr_band": [0.1, 0.01]}}, "search.lr_band"),
])
def test_presets_that_cannot_apply_are_refused(raw, message):
    with pytest.raises(ConfigError) as err:
        spec_mod.from_dict(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_spaces_command_lists_every_preset(capsys):
    assert main(["spaces"]) == 0
    out = capsys.readouterr().out
    for name in list_presets():
        assert name in out
    assert "1803.09820" in out
