import pytest

from tunesmith.cluster.resources import data_parallel_cpus, max_concurrent
from tunesmith.trainables.config import ConfigError


@pytest.mark.parametrize("cpus,gpus,tc,tg,req,expected", [
    (2, 0, 1, 0, None, 2),
    (16, 8, 1, 2, None, 4),      # two GPUs a trial: four at once, the rest would sit pending
    (16, 1, 1, 0.5, None, 2),    # fractional GPUs share a card
    (16, 8, 2, 1, 3, 3),         # the spec's own limit wins when lower
    (2, 0, 2, 0, None, 1),
])
def test_max_concurrent(cpus, gpus, tc, tg, req, expected):
    assert max_concurrent(cpus, gpus, tc, tg, req) == expected


def test_trial_larger_than_the_cluster_names_the_field():
    with pytest.raises(ConfigError, match="resources.gpus"):
        max_concurrent(16, 0, 1, 1)
    with pytest.raises(ConfigError, match="resources.cpus"):
        max_concurrent(2, 0, 4, 0)


def test_a_data_parallel_trial_counts_its_own_sliver_and_is_refused_when_it_cannot_fit():
    """Two ranks at one CPU each on two CPUs: with the trial's own 0.01 CPU it never fits, and
    Ray Train would wait for its workers until the budget ran out (no epoch, no error)."""
    assert data_parallel_cpus(2, 0.5, 2) == pytest.approx(1.01)
    assert max_concurrent(4, 0, data_parallel_cpus(4, 1, 2), 0) == 1
    with pytest.raises(ConfigError) as err:
        data_parallel_cpus(2, 1, 2)
    assert str(err.value).startswith("resources.cpus = 1: 2 data-parallel ranks") and "at most 0.99 per rank" in str(err.value)


@pytest.mark.parametrize("resources", [{"cpus": 10}, {"cpus": 10, "workers": 2}])
def test_a_trial_larger_than_every_node_is_refused_though_the_cluster_sums_enough(resources):
    """Four nodes of 8 CPUs: 32 CPUs in all, but no trial (or rank) of 10 CPUs can ever be placed,
    and it sat pending forever."""
    from tunesmith.cluster.connect import ClusterInfo
    from tunesmith.orchestrator.spec import from_dict
    from tunesmith.orchestrator.sweep import concurrency_for
    cluster = ClusterInfo(address="HEAD:6379", cpus=32, gpus=4, nodes=4, started_here=False, node_cpus=8, node_gpus=1)
    with pytest.raises(ConfigError) as err:
        concurrency_for(from_dict({"resources": resources}), cluster)
    assert err.value.field == "resources.cpus" and "the largest node has 8 CPUs" in err.value.problem
    # a data-parallel trial spreads its ranks: two ranks of one GPU each fit nodes of one
    assert concurrency_for(from_dict({"resources": {"cpus": 1, "gpus": 2}}), cluster) == 2
