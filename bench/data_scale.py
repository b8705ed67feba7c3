"""Data at scale: memory per trial, load time, and streaming throughput, before and after.

1. Load: peak RSS and seconds to load, in a fresh process, for the float32 copy the trainer
   used to hold ("before") and the uint8 copy it holds now ("after").
2. Trials on one node: the private memory (USS) and RSS that the first and each additional
   concurrent trial adds, when every trial loads its own float32 copy ("before") and when all
   read the one uint8 copy in Ray's object store ("after").
3. Streaming: images per second through decode, batching and a training step of the default
   model on CPU, against the in-memory path on the same folder (target: at least 80%).

Datasets, made by the benchmark and cached under $TUNESMITH_CACHE/bench: 50,000 images at
3x32x32 (``synthetic``) and 10,000 at 3x128x128 (an image folder of JPEGs).

    .venv/bin/python bench/data_scale.py [--trials 4] [--skip-128]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SETS = {
    "50k x 3x32x32": {"name": "synthetic", "num_samples": 50000, "image_size": 32},
    "10k x 3x128x128": {"name": "imagefolder", "image_size": 128},
}


def _folder(n: int = 10000, size: int = 128, classes: int = 10) -> str:
    """An image folder of JPEGs with some structure (a coloured blob per class), made once."""
    import numpy as np
    from PIL import Image
    from tunesmith.trainables.generated import cache_dir
    root = os.path.join(cache_dir(), "bench", f"folder-{n}-{size}")
    if os.path.exists(os.path.join(root, ".done")):
        return root
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        k = i % classes
        d = os.path.join(root, f"class{k}")
        os.makedirs(d, exist_ok=True)
        cx, cy = 0.2 + 0.06 * k, rng.uniform(0.2, 0.8)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02)
        img = rng.uniform(0, 0.5, (size, size, 3)) + blob[..., None] * rng.uniform(0.3, 0.7, 3)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(os.path.join(d, f"{i}.jpg"), quality=90)
    open(os.path.join(root, ".done"), "w").close()
    return root


def _cfg(ds: dict):
    from tunesmith.trainables.config import DatasetConfig
    return DatasetConfig(**ds)


# --- 1. load in a fresh process --------------------------------------------------------------
def load_worker(ds: dict, mode: str) -> dict:
    """Load once in this fresh process. The peak is sampled every few milliseconds and counted
    above the process's RSS just before loading (Python and torch imported), so that it is the
    loading's own cost, comparable with the size held."""
    import threading
    import psutil
    import torch  # noqa: F401
    from tunesmith.trainables import data as data_mod
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]

    def watch():
        while True:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.003)
    threading.Thread(target=watch, daemon=True).start()
    began = time.perf_counter()
    d = data_mod.load(_cfg({**ds, "stream": False} if ds["name"] == "imagefolder" else ds))
    if mode == "float32":   # what the trainer held before: the whole set normalised as float32
        tx = d.normalise(d.train_x)
        vx = d.normalise(d.val_x)
        del d.train_x, d.val_x
        held = tx.numel() * 4 + vx.numel() * 4
    else:
        held = d.nbytes
    seconds = time.perf_counter() - began
    time.sleep(0.02)
    return {"seconds": seconds, "held_mb": held / 2 ** 20, "peak_rss_mb": (peak[0] - base) / 2 ** 20,
            "peak_ratio": (peak[0] - base) / held}


def _in_process(fn: str, *args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", fn, json.dumps(args)], capture_output=True,
                         text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _baseline_mb() -> float:
    import psutil
    import torch  # noqa: F401 - the baseline includes torch, as every trial does
    return psutil.Process().memory_info().rss / 2 ** 20


# --- 2. trials on one node -------------------------------------------------------------------
def trials_on_a_node(ds: dict, n: int) -> dict:
    import ray
    from tunesmith.cluster.connect import connect, disconnect
    from tunesmith.orchestrator.data_share import share
    info = connect(num_cpus=n)

    @ray.remote(num_cpus=1)
    class Trial:
        """Holds the data as a trial would, and reports what that costs this process."""

        def __init__(self):
            import psutil
            import torch  # noqa: F401
            self.proc = psutil.Process()
            self.base = self.mem()

        def mem(self):
            m = self.proc.memory_full_info()
            return {"uss": m.uss / 2 ** 20, "rss": m.rss / 2 ** 20}

        def hold(self, mode, ref=None):
            from tunesmith.trainables import data as data_mod
            from tunesmith.trainables.config import DatasetConfig
            cfg = DatasetConfig(**({**ds, "stream": False} if ds["name"] == "imagefolder" else ds))
            if mode == "before":
                d = data_mod.load(cfg)
                self.x = (d.normalise(d.train_x), d.normalise(d.val_x))
                data_mod._CACHE.clear()
            else:
                self.x = data_mod.load(cfg, shared=ray.get(ref[0]))
                self.x.normalise(self.x.train_x[:64])   # touch it, as training does
                s = float(self.x.train_x[::97].float().sum())   # and read pages across the whole set
                del s
            now = self.mem()
            return {k: now[k] - self.base[k] for k in now}

    out = {}
    for mode in ("before", "after"):
        ref = share(_cfg({**ds, "stream": False} if ds["name"] == "imagefolder" else ds)) if mode == "after" else None
        if ref:
            ray.get(ref[0])
        actors = [Trial.remote() for _ in range(n)]
        ray.get([a.mem.remote() for a in actors])
        added = []
        for a in actors:   # one after another: the first, then each additional trial
            added.append(ray.get(a.hold.remote(mode, ref)))
        out[mode] = added
        for a in actors:
            ray.kill(a)
    disconnect(info)
    return out


# --- 3. streaming throughput -----------------------------------------------------------------
def throughput_worker(folder: str, size: int, stream: bool, epochs: int = 2) -> dict:
    from tunesmith.trainables.config import TrainConfig
    from tunesmith.trainables.trainer import Trainer
    cfg = TrainConfig.from_dict({"dataset": {"name": "imagefolder", "data_dir": folder, "image_size": size,
                                             "stream": stream, "workers": 1 if stream else None},
                                 "trainer": {"epochs": epochs}})
    t = Trainer(cfg, cpu_threads=1)   # a trial holds one CPU; the stream's decoder takes the other
    rates = [m["samples_per_second"] for m in t.run()]
    return {"images_per_second": max(rates), "how": t.data.how}


def raydata_worker(folder: str, size: int, epochs: int = 2) -> dict:
    """The alternative the issue names: Ray Data reads and decodes the folder (read_images, one
    CPU for its tasks) and feeds torch batches to the same model and optimiser. Its img/s is
    compared with the same training loop over the decoded set in memory, in this process."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import numpy as np
    import ray
    import torch
    from torch import nn
    from tunesmith.trainables.config import ModelConfig
    from tunesmith.trainables.models import build_model
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    classes = sorted(os.listdir(folder))
    index = {c: i for i, c in enumerate(classes)}
    model = build_model(ModelConfig(), (3, size, size), len(classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    def to_batch(b):
        x = torch.as_tensor(np.ascontiguousarray(b["image"].transpose(0, 3, 1, 2))).float().div_(255)
        y = torch.as_tensor([index[os.path.basename(os.path.dirname(p))] for p in b["path"]])
        return x, y

    ds = ray.data.read_images(folder, size=(size, size), mode="RGB", include_paths=True,
                              file_extensions=["jpg", "jpeg", "png", "webp"])
    rates, held = [], []
    for _ in range(epochs):
        began, n = time.perf_counter(), 0
        for b in ds.random_shuffle().iter_batches(batch_size=32, batch_format="numpy", prefetch_batches=4):
            x, y = to_batch(b)
            if len(held) < 400:
                held.append((x, y))
            step(x, y)
            n += len(y)
        rates.append(n / (time.perf_counter() - began))
    began, n = time.perf_counter(), 0   # the same loop over batches already in memory
    for x, y in held:
        step(x, y)
        n += len(y)
    memory = n / (time.perf_counter() - began)
    ray.shutdown()
    return {"images_per_second": max(rates), "in_memory": memory}


def main(argv=None) -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        fn, args = sys.argv[2], json.loads(sys.argv[3])
        print(json.dumps(globals()[fn](*args)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4, help="concurrent trials on the node (default 4)")
    ap.add_argument("--skip-128", action="store_true", help="only the 32x32 set")
    ap.add_argument("--parts", nargs="+", type=int, default=[1, 2, 3], choices=[1, 2, 3],
                    help="which sections to run (default all)")
    args = ap.parse_args(argv)
    sets = dict(SETS)
    if args.skip_128 or args.parts == [3]:
        sets.pop("10k x 3x128x128")
    else:
        t0 = time.perf_counter()
        sets["10k x 3x128x128"] = {**sets["10k x 3x128x128"], "data_dir": _folder()}
        print(f"(image folder ready in {time.perf_counter() - t0:.0f}s)", flush=True)

    if 1 in args.parts:
        loading(sets)
    if 2 in args.parts:
        sharing(sets, args.trials)
    if 3 in args.parts:
        streaming()
    return 0


def loading(sets: dict) -> None:
    print("\n1. loading, in a fresh process: peak RSS added while loading (above Python and torch)")
    print(f"{'dataset':<16} {'held as':<8} {'held MB':>8} {'peak MB':>8} {'peak/held':>9} {'seconds':>8}")
    for label, ds in sets.items():
        for mode in ("float32", "uint8"):
            r = _in_process("load_worker", ds, mode)
            print(f"{label:<16} {mode:<8} {r['held_mb']:>8.0f} {r['peak_rss_mb']:>8.0f} {r['peak_ratio']:>9.2f} "
                  f"{r['seconds']:>8.1f}", flush=True)


def sharing(sets: dict, trials: int) -> None:
    print(f"\n2. {trials} trials on one node: memory each adds when it takes the data "
          "(before: its own float32 copy; after: the shared uint8 copy)")
    print(f"{'dataset':<16} {'':<7} " + " ".join(f"{'trial ' + str(i + 1) + ' USS/RSS MB':>20}" for i in range(trials)))
    for label, ds in sets.items():
        r = trials_on_a_node(ds, trials)
        for mode in ("before", "after"):
            cells = " ".join(f"{x['uss']:>10.0f}/{x['rss']:<9.0f}" for x in r[mode])
            print(f"{label:<16} {mode:<7} {cells}", flush=True)


def streaming() -> None:
    print("\n3. streaming throughput (decode + batch + a training step of the default model, 1 CPU "
          "for the trainer, 1 for the decoder)")
    folder32 = _folder(10000, 32)
    mem = _in_process("throughput_worker", folder32, 32, False)
    st = _in_process("throughput_worker", folder32, 32, True)
    rd = _in_process("raydata_worker", folder32, 32)
    print(f"10k x 3x32x32 folder  in memory: {mem['images_per_second']:.0f} img/s; {st['how']}: "
          f"{st['images_per_second']:.0f} img/s = {100 * st['images_per_second'] / mem['images_per_second']:.0f}% "
          f"(target >= 80%)")
    print(f"the same folder through Ray Data (read_images, 1 CPU) into the same model: "
          f"{rd['images_per_second']:.0f} img/s against {rd['in_memory']:.0f} in memory in that loop = "
          f"{100 * rd['images_per_second'] / rd['in_memory']:.0f}%")


if __name__ == "__main__":
    sys.exit(main())
