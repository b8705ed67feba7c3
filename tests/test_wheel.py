"""tunesmith as users install it: the built wheel in a fresh virtual environment claims one import
name, and a user's own `cluster.py` or `trainables/` in the working directory cannot shadow it."""
import os
import subprocess
import sys
import sysconfig

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sh(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-1500:]}\n{proc.stderr[-2500:]}"
    return proc


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """Build the wheel from a copy of the tracked files (nothing written into the checkout) and
    install it, without dependencies, into a new venv. The dependencies come from the test's
    own environment through a path file, so nothing is downloaded; that path has no editable
    finder, so `tunesmith` can only come from the wheel."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    files = _sh(["git", "ls-files", "-z"], cwd=ROOT).stdout.split("\0")
    for rel in filter(None, files):
        if os.path.exists(os.path.join(ROOT, rel)):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(open(os.path.join(ROOT, rel), "rb").read())
    _sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(base / "dist"), str(src)])
    (wheel,) = (base / "dist").iterdir()
    venv = base / "venv"
    _sh([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = str(venv / "bin" / "python")
    site = _sh([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    before = set(os.listdir(site))
    _sh([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", str(wheel)])
    added = set(os.listdir(site)) - before
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    return venv, site, added


def test_the_wheel_claims_one_top_level_name(wheel_venv):
    venv, site, added = wheel_venv
    names = {n for n in added if n != "__pycache__"}
    assert {n for n in names if not n.endswith(".dist-info")} == {"tunesmith"}, names
    assert [n for n in names if n.endswith(".dist-info")] == ["tunesmith-0.1.0.dist-info"]
    assert sorted(os.listdir(os.path.join(site, "tunesmith"))) == [
        "cluster", "orchestrator", "search_spaces", "trainables"]
    assert os.path.exists(os.path.join(site, "tunesmith", "cluster", "deploy", "aws-gpu.yaml"))


def test_run_works_beside_a_decoy_cluster_module(wheel_venv, tmp_path):
    """The working directory holds a `cluster.py` and a `trainables/` that fail when imported;
    Ray's workers see that directory too. The sweep must not notice them."""
    venv, site, _ = wheel_venv
    work = tmp_path / "work"
    (work / "trainables").mkdir(parents=True)
    decoy = "raise ImportError('the decoy in the working directory was imported')\n"
    (work / "cluster.py").write_text(decoy)
    (work / "orchestrator.py").write_text(decoy)
    (work / "trainables" / "__init__.py").write_text(decoy)
    (work / "spec.yaml").write_text(
        "name: decoy\ndataset: {name: digits}\nmodel: {name: small_cnn}\n"
        "trainer: {epochs: 2}\n"
        "search: {num_samples: 2, space: {lr: {loguniform: [0.01, 0.3]}}}\nconfirm: {top: 1, seeds: 1}\n"
        f"results_dir: {tmp_path / 'results'}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    cmd = [str(venv / "bin" / "tunesmith"), "run", "spec.yaml"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-2500:]
    origin = subprocess.run([str(venv / "bin" / "python"), "-c",
                             "import tunesmith.orchestrator as o; print(o.__file__)"],
                            capture_output=True, text=True, cwd=work, env=env).stdout
    assert origin.startswith(site), origin
    table = pq.read_table(tmp_path / "results" / "decoy" / "trials.parquet").to_pandas()
    trials = table[table.phase == "search"]
    assert list(table[table.phase == "confirm"].test_acc.notna()) == [True]   # the installed package confirms
    # Ray's workers start in the driver's working directory with it first on sys.path: under the old
    # top-level names they imported the decoy `trainables` and every trial errored.
    assert len(trials) == 2 and set(trials.status) <= {"completed", "pruned"}, trials.status
    assert trials.error.isna().all() and trials.best_val_acc.max() > 0.5
