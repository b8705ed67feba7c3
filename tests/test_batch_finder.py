import pytest

from tunesmith.trainables import batch_finder as bf
from tunesmith.trainables.config import TrainConfig


def test_doubles_then_binary_searches_under_a_simulated_limit():
    tried = []

    def fits(bs):
        tried.append(bs)
        return bs <= 300
    r = bf.search(fits, start=16, margin=0.9)
    assert tried[:6] == [16, 32, 64, 128, 256, 512]
    assert 290 <= r.largest_fit <= 300
    assert r.per_gpu_batch_size == int(r.largest_fit * 0.9) // 8 * 8
    assert r.limit == "memory"
    assert all(bs <= 300 for bs, ok in r.tried if ok) and all(bs > 300 for bs, ok in r.tried if not ok)


def test_start_too_big_halves_down():
    r = bf.search(lambda bs: bs <= 5, start=64, margin=1.0)
    assert r.largest_fit == 5 and r.tried[0] == (64, False)


def test_capped_by_the_training_set():
    r = bf.search(lambda bs: True, start=16, max_batch=1347)
    assert r.largest_fit == 1347 and r.per_gpu_batch_size == 1347 and r.limit == "the training set's size"


def test_nothing_fits_is_a_clear_error():
    with pytest.raises(bf.BatchFinderError, match="batch of 1"):
        bf.search(lambda bs: False)


def test_cpu_budget_caps_the_batch_with_a_measured_cost():
    cfg = TrainConfig.from_dict({"model": {"width": 16}})
    fixed, per_sample, n = bf.cpu_per_sample_bytes(cfg)
    assert fixed > 0 and per_sample > 0 and n == 1078   # 1797 digits less the 25% validation and 15% test
    budget = fixed + 200 * per_sample          # a simulated memory limit of 200 samples
    r = bf.find(cfg, memory_budget_bytes=budget, margin=0.9)
    assert 190 <= r.largest_fit <= 200
    assert r.per_gpu_batch_size == int(r.largest_fit * 0.9) // 8 * 8
