import math

import pytest

from tunesmith.trainables.schedules import SCHEDULES, ScheduleParams, list_schedules, lr_at, momentum_at

P = ScheduleParams(lr=1.0)


@pytest.mark.parametrize("name", list_schedules())
def test_every_schedule_is_positive_finite_and_bounded_by_peak(name):
    for i in range(0, 1001):
        lr = lr_at(name, 20 * i / 1000, 20, P)
        assert math.isfinite(lr) and 0 <= lr <= P.lr + 1e-12, (name, i, lr)


def test_constant():
    assert lr_at("constant", 3.3, 10, P) == 1.0


def test_step_divides_by_ten_every_n_epochs():
    p = ScheduleParams(lr=0.1, step_epochs=5)
    assert lr_at("step", 0, 20, p) == pytest.approx(0.1)
    assert lr_at("step", 4.99, 20, p) == pytest.approx(0.1)
    assert lr_at("step", 5, 20, p) == pytest.approx(0.01)
    assert lr_at("step", 15.5, 20, p) == pytest.approx(1e-4)


def test_warmup_then_cosine():
    p = ScheduleParams(lr=1.0, warmup_epochs=2)
    assert lr_at("warmup_cosine", 0, 10, p) == 0
    assert lr_at("warmup_cosine", 1, 10, p) == pytest.approx(0.5)
    assert lr_at("warmup_cosine", 2, 10, p) == pytest.approx(1.0)
    assert lr_at("warmup_cosine", 6, 10, p) == pytest.approx(0.5)
    assert lr_at("warmup_cosine", 10, 10, p) == pytest.approx(0.0, abs=1e-12)


def test_triangular_cycles_between_bounds():
    p = ScheduleParams(lr=1.0, div_factor=4, cycle_epochs=4)
    assert lr_at("triangular", 0, 12, p) == pytest.approx(0.25)
    assert lr_at("triangular", 2, 12, p) == pytest.approx(1.0)
    assert lr_at("triangular", 4, 12, p) == pytest.approx(0.25)
    assert lr_at("triangular", 6, 12, p) == pytest.approx(1.0)
    # momentum moves inversely
    assert momentum_at("triangular", 2, 12, p) == pytest.approx(0.85)
    assert momentum_at("triangular", 4, 12, p) == pytest.approx(0.95)


def test_one_cycle_follows_smith():
    p = ScheduleParams(lr=1.0)   # min = max/10, annihilation in the last 10%
    total = 10
    assert lr_at("one_cycle", 0, total, p) == pytest.approx(0.1)
    assert lr_at("one_cycle", 4.5, total, p) == pytest.approx(1.0)
    assert lr_at("one_cycle", 9, total, p) == pytest.approx(0.1)
    assert lr_at("one_cycle", 10, total, p) == pytest.approx(0.001)
    assert momentum_at("one_cycle", 0, total, p) == pytest.approx(0.95)
    assert momentum_at("one_cycle", 4.5, total, p) == pytest.approx(0.85)
    assert momentum_at("one_cycle", 9, total, p) == pytest.approx(0.95)
    assert momentum_at("one_cycle", 9.5, total, p) == pytest.approx(0.95)


def test_momentum_fixed_outside_cyclical_schedules_and_when_off():
    assert momentum_at("step", 1, 10, P) is None
    assert momentum_at("one_cycle", 1, 10, ScheduleParams(lr=1.0, cycle_momentum=False)) is None


def test_unknown_schedule_names_the_choices():
    with pytest.raises(KeyError, match="one_cycle"):
        lr_at("cosine_restarts", 0, 1, P)


def test_registry_matches_config_names():
    from tunesmith.trainables.config import SCHEDULE_NAMES
    assert sorted(SCHEDULE_NAMES) == sorted(SCHEDULES)
