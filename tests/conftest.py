import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def ray_session():
    """One Ray instance for every integration test, bound to 127.0.0.1 like the CLI's."""
    from cluster.connect import connect
    info = connect(num_cpus=2)
    yield info
    import ray
    ray.shutdown()


@pytest.fixture
def results_dir(tmp_path):
    return str(tmp_path / "results")


def write_spec(path, text: str) -> str:
    with open(path, "w") as fh:
        fh.write(text)
    return str(path)
