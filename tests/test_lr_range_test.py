import math

import numpy as np
import pytest

from tunesmith.trainables import lr_range_test as lf
from tunesmith.trainables.config import TrainConfig


def _curve(n=100, start=1e-7, end=10.0):
    lrs = [lf.lr_at_step(i, n, start, end) for i in range(n)]
    return lrs, np.log10(lrs)


def _known(n=100):
    """Flat at 2.3 up to 1e-4, falls as a line in log LR to 0.3 at 1e-1, then climbs steeply."""
    lrs, logs = _curve(n)
    loss = []
    for x in logs:
        if x < -4:
            loss.append(2.3)
        elif x < -1:
            loss.append(2.3 - (x + 4) * (2.0 / 3))
        else:
            loss.append(0.3 + 20 * (x + 1) ** 2)
    return lrs, loss


def test_exponential_and_linear_steps():
    assert lf.lr_at_step(0, 100, 1e-7, 10) == pytest.approx(1e-7)
    assert lf.lr_at_step(99, 100, 1e-7, 10) == pytest.approx(10)
    assert lf.lr_at_step(50, 101, 1e-6, 1e-2) == pytest.approx(1e-4)
    assert lf.lr_at_step(50, 101, 0.0, 1.0, "linear") == pytest.approx(0.5)


def test_suggestions_on_a_known_curve():
    lrs, loss = _known()
    s = lf.suggest_all(lrs, loss)   # unsmoothed: the answers are exact
    assert 1e-4 < s["steepest"] < 1e-1
    assert 10 ** -2.9 < s["valley"] < 10 ** -2.1      # the middle of the fall from 1e-4 to 1e-1, in log LR
    assert s["min10"] == pytest.approx(lrs[int(np.argmin(loss))] / 10)
    assert 10 ** -2.2 < s["min10"] < 10 ** -1.8


def test_a_fall_after_a_blow_up_is_not_read_as_a_place_to_train():
    """The loss falls to its minimum at 1e-1, spikes, drops back steeply and at length from the
    spike, then climbs for good (a BatchNorm net on digits did this). The steepest fall and the
    longest fall of the whole curve lie in the drop-back, above the minimum: no rule may read it."""
    lrs, logs = _curve(200)
    loss = []
    for x in logs:
        if x < -4:
            loss.append(2.3)
        elif x < -1:
            loss.append(2.3 - (x + 4) * (2.0 / 3))                  # a gentle fall to 0.3
        elif x < -0.5:
            loss.append(0.3 + 12 * (x + 1))                           # the spike, to 6.3
        elif x < 0.5:
            loss.append(6.3 - 5.5 * (x + 0.5))                        # falls back fast, to 0.8
        else:
            loss.append(0.8 + 20 * (x - 0.5))
    s = lf.suggest_all(lrs, loss)
    lowest = lrs[int(np.argmin(loss))]
    assert lowest == pytest.approx(0.1, rel=0.1)
    assert 1e-4 < s["steepest"] < lowest and 1e-4 < s["valley"] < lowest, s


def test_nan_tail_is_cut_not_crashed():
    lrs, loss = _known()
    loss = loss[:80] + [math.nan] * 20
    s = lf.suggest_all(lrs, loss)
    assert all(math.isfinite(v) for v in s.values())


@pytest.mark.parametrize("loss,message", [
    ([1.0] * 100, "flat"),
    ([1.0, math.nan] + [1.0] * 98, "usable points"),
    ([0.5 + 0.01 * i for i in range(100)], "never falls|lowest at the start"),
])
def test_unusable_curves_give_a_clear_error(loss, message):
    lrs, _ = _curve()
    with pytest.raises(lf.LRFinderError, match=message):
        lf.suggest_all(lrs, loss)


def test_band_is_max_over_ten():
    assert lf.band(0.3) == pytest.approx((0.03, 0.3))


def test_range_test_on_a_tiny_model():
    cfg = TrainConfig.from_dict({"model": {"width": 8}, "trainer": {"per_gpu_batch_size": 64}})
    curve = lf.range_test(cfg, steps=200, cpu_threads=1)
    assert 20 < len(curve.lrs) <= 200 and curve.lrs[0] == pytest.approx(1e-7)
    assert curve.problem is None   # the loss fell clearly below chance
    s = curve.suggest()
    assert 1e-4 < s["valley"] < 5


def test_range_test_restores_the_model_it_was_given(monkeypatch):
    import torch
    from tunesmith.trainables import trainer as trainer_mod
    made = []
    real = trainer_mod.Trainer

    class Spy(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)
    monkeypatch.setattr(trainer_mod, "Trainer", Spy)
    cfg = TrainConfig.from_dict({"model": {"width": 8}})
    curve = lf.range_test(cfg, steps=30, val_loss=True, cpu_threads=1)
    assert curve.mode == "val"
    fresh = real(cfg, cpu_threads=1).model.state_dict()
    tested = made[0].model.state_dict()
    assert all(torch.equal(fresh[k], tested[k]) for k in fresh)


def test_linear_range_test_steps_evenly():
    cfg = TrainConfig.from_dict({"model": {"width": 8}})
    curve = lf.range_test(cfg, start=1e-3, end=1.0, steps=20, mode="linear", cpu_threads=1)
    gaps = np.diff(curve.lrs)
    assert curve.lrs[0] == pytest.approx(1e-3) and np.allclose(gaps, gaps[0])
