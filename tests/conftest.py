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


@pytest.fixture
def spec_file(tmp_path):
    """Write a spec into the test's folder; RESULTS in the text becomes <tmp>/results."""
    def write(text: str, name: str = "spec.yaml") -> str:
        path = tmp_path / name
        path.write_text(text.replace("RESULTS", str(tmp_path / "results")))
        return str(path)
    return write
