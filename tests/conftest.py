import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def ray_session():
    """One Ray instance for every integration test, bound to 127.0.0.1 like the CLI's."""
    from tunesmith.cluster.connect import connect
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


@pytest.fixture(scope="session")
def glyph_folder(tmp_path_factory):
    """A small ImageFolder harder than digits, made here: 10 digit classes drawn from the
    machine's fonts, rotated, blurred and noised, 32x32 grayscale, 300 per class."""
    import numpy as np
    from PIL import Image
    from tunesmith.trainables import generated
    root = tmp_path_factory.mktemp("glyphs")
    rng = np.random.default_rng(0)
    fonts = generated._fonts()
    for label in range(10):
        folder = root / str(label)
        folder.mkdir()
        for i in range(300):
            Image.fromarray(generated._glyph(rng, str(label), fonts)[0]).save(folder / f"{i}.png")
    return str(root)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Generated datasets go to a folder of the test session, never the user's cache."""
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
