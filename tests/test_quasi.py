"""Quasi-random search without a Ray instance: the searcher object alone."""
import math
import pickle

import pytest

from tunesmith.search_spaces.quasi import QuasiRandomSearch
from tunesmith.search_spaces.space import Dimension

DIMS = [Dimension.parse("lr", {"loguniform": [1e-4, 1.0]}, "lr"),
        Dimension.parse("max_momentum", {"choice": [0.99, 0.97, 0.95, 0.9]}, "m"),
        Dimension.parse("model.width", {"randint": [16, 65]}, "w")]


def _draw(searcher, n):
    return [searcher.suggest(f"t{i}") for i in range(n)]


def test_every_prefix_is_spread_over_the_log_range():
    """Each of the first 2^k LRs falls in its own 1/2^k of the log range: no two of the first
    eight share an eighth of [1e-4, 1], which independent draws do most of the time."""
    pts = _draw(QuasiRandomSearch(DIMS, seed=3), 8)
    for k in (1, 2, 3):
        cells = [int((math.log10(p["lr"]) + 4) / 4 * 2 ** k) for p in pts[:2 ** k]]
        assert sorted(cells) == list(range(2 ** k)), (k, [p["lr"] for p in pts])
    assert all(p["max_momentum"] in (0.99, 0.97, 0.95, 0.9) for p in pts)
    # the second coordinate (base 3): the first nine fill each ninth once, so each of four
    # choices, a quarter wide, holds at least two whole ninths
    nine = _draw(QuasiRandomSearch(DIMS, seed=3), 9)
    assert all(sum(p["max_momentum"] == m for p in nine) >= 2 for m in (0.99, 0.97, 0.95, 0.9))
    assert all(isinstance(p["model.width"], int) and 16 <= p["model.width"] < 65 for p in pts)


def test_seeds_scramble_and_the_same_seed_repeats():
    a, b, c = (_draw(QuasiRandomSearch(DIMS, seed=s), 4) for s in (0, 0, 1))
    assert a == b and a != c


def test_points_come_first_and_a_restore_continues_the_sequence(tmp_path):
    s = QuasiRandomSearch(DIMS, seed=0, points_to_evaluate=[{"lr": 0.1, "max_momentum": 0.9, "model.width": 32}])
    assert s.suggest("p") == {"lr": 0.1, "max_momentum": 0.9, "model.width": 32}
    first = _draw(s, 3)
    s.save(str(tmp_path / "state.pkl"))
    rest = _draw(s, 3)
    fresh = QuasiRandomSearch(DIMS, seed=0)
    fresh.restore(str(tmp_path / "state.pkl"))
    assert _draw(fresh, 3) == rest and not set(map(str, rest)) & set(map(str, first))
    assert pickle.loads(pickle.dumps(s)).drawn == s.drawn


def test_a_grid_is_refused():
    with pytest.raises(ValueError, match="grid"):
        QuasiRandomSearch([Dimension.parse("lr", {"grid": [0.1, 0.2]}, "lr")])


def test_coupled_draws_spread_the_effective_step_and_survive_a_restore(tmp_path):
    """couple=(lr, max_momentum, 0.9): the LR drawn is the LR at momentum 0.9, and each trial's
    LR is scaled by (1-m)/(1-0.9), so lr/(1-m) is what fills the range (here [1e-3, 10])."""
    plain = _draw(QuasiRandomSearch(DIMS, seed=5), 8)
    s = QuasiRandomSearch(DIMS, seed=5, couple=("lr", "max_momentum", 0.9))
    coupled = _draw(s, 8)
    for p, c in zip(plain, coupled):   # the same sequence, the LR scaled by the momentum's share
        assert c["max_momentum"] == p["max_momentum"] and c["model.width"] == p["model.width"]
        assert c["lr"] == pytest.approx(p["lr"] * (1 - p["max_momentum"]) / 0.1)
    steps = [c["lr"] / (1 - c["max_momentum"]) for c in coupled]
    assert all(1e-3 * (1 - 1e-9) <= x <= 10 * (1 + 1e-9) for x in steps)
    cells = [int((math.log10(x) + 3) / 4 * 4) for x in steps[:4]]
    assert sorted(cells) == [0, 1, 2, 3], steps   # the effective steps fill the quarters
    assert any(c["max_momentum"] == 0.99 and c["lr"] < 0.1 * p["lr"] * 1.0001 for c, p in zip(coupled, plain))
    s.save(str(tmp_path / "state.pkl"))
    fresh = QuasiRandomSearch(DIMS, seed=5)
    fresh.restore(str(tmp_path / "state.pkl"))
    assert fresh.couple == ("lr", "max_momentum", 0.9) and _draw(fresh, 2) == _draw(s, 2)
    with pytest.raises(ValueError, match="momentum"):
        QuasiRandomSearch(DIMS[:1], couple=("lr", "momentum", 0.9))


def test_slots_held_outside_tune_count_against_the_cap():
    """smith's pilot holds one of the sweep's slots: with a cap of 2, Tune gets one trial while
    it runs, two once it ends, and a trial's end frees its slot."""
    s = QuasiRandomSearch(DIMS, seed=1)
    pilot = {"held": 1}
    s.held = lambda: pilot["held"]
    assert s.set_max_concurrency(2) is True   # kept here: no ConcurrencyLimiter around it
    assert s.suggest("a") is not None
    assert s.suggest("b") is None
    pilot["held"] = 0
    assert s.suggest("b") is not None and s.suggest("c") is None
    s.on_trial_complete("a")
    assert s.suggest("c") is not None
    restored = pickle.loads(pickle.dumps(s))   # Tune pickles its searcher: the slot does not travel
    assert restored.held is None and restored.drawn == s.drawn


def test_centre_is_the_middle_of_each_dimension():
    from tunesmith.search_spaces.space import centre
    dims = [Dimension.parse("lr", {"loguniform": [0.01, 1.0]}, "lr"),
            Dimension.parse("max_momentum", {"choice": [0.99, 0.97, 0.95, 0.9]}, "m"),
            Dimension.parse("weight_decay", {"choice": [1e-2, 1e-3, 1e-4]}, "wd")]
    assert centre(dims) == {"lr": pytest.approx(0.1), "max_momentum": 0.95, "weight_decay": 1e-3}
    coupled = centre(dims, ("lr", "max_momentum", 0.9))   # lr/(1-m) is what the range test measured
    assert coupled["lr"] == pytest.approx(0.1 * 0.05 / 0.1)
