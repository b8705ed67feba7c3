"""The GPU check: one prepared run that answers, on a GPU machine, whether tunesmith's GPU path is
fast and right. It prints one table and writes it as JSON (--out).

Cases (each with its peak GPU memory):
- the trainer's images per second against a bare PyTorch loop with the same model, batch,
  precision (bf16 autocast), channels_last and data on the device: small_cnn and resnet18 at 32 px,
  timm's resnet18 at 128 px (goal: at least 90% of the bare loop); then the trainer with the per-step host sync forced
  back on (sync_every=1), to show what reading the losses a window late buys;
- four trials at resources.gpus 0.25 against one trial on the whole GPU: total images per second;
- the batch finder's answer and its wall time on resnet18 at 128 px;
- bf16 against fp32: the final accuracy of the same runs over three seeds (the means should agree
  within 0.5 points; the seeds' spread is printed beside);
- `tunesmith smith` end to end on a generated colour dataset (shapes) with a 120 s budget: the
  time to the first trial's first epoch, the best accuracy, and the GPU's utilisation over the run.
The first case also runs a timm model at 128 px (timm:resnet18, the library's own stem).

On an H200 it took 263 s (under 8 minutes). ``--smoke`` runs every case on the CPU in tiny sizes,
so that the script cannot rot: tests/test_gpu_check.py runs it.

    python bench/gpu_check.py [--smoke] [--out gpu_check.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # bench/common.py

# sizes: (on a GPU, --smoke on the CPU)
SIZES = {
    "throughput": {"gpu": [("small_cnn", 32, 512, 200), ("resnet18", 32, 256, 100), ("timm:resnet18", 128, 128, 150)],
                   "smoke": [("small_cnn", 16, 32, 6), ("resnet18", 16, 16, 3)]},
    "share": {"gpu": {"samples": 4096, "size": 32, "epochs": 3, "batch": 256, "trials": 4},
              # two on the CPU: each trial's worker imports torch (6 s of CPU here) before it trains
              "smoke": {"samples": 256, "size": 16, "epochs": 1, "batch": 32, "trials": 2}},
    "batch": {"gpu": ("resnet18", 128), "smoke": ("small_cnn", 16)},
    # a run long enough to settle (4 epochs of shapes read 0.23 and 0.27: early training's chaos,
    # not the precision), over seeds, whose spread the gap is read against
    "precision": {"gpu": {"dataset": "shapes", "epochs": 10, "seeds": 3},
                  "smoke": {"dataset": "digits", "epochs": 1, "seeds": 1}},
    # smoke: 4 stage-2 trials within at most 40 s, as smith starts a Ray of its own beside the test
    # suite's (stage 1 took 20 s so); the GPU run fills its budget with as many trials as fit
    "smith": {"gpu": {"dataset": "shapes", "budget": 120, "samples": None},
              "smoke": {"dataset": "digits", "budget": 40, "samples": 4}},
}


def _device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _peak_reset():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb():
    import torch
    return round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if torch.cuda.is_available() else None


def _sync():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _synthetic(model: str, size: int, batch: int, steps: int, precision: str = "auto"):
    from tunesmith.trainables.config import TrainConfig
    return TrainConfig.from_dict({
        "dataset": {"name": "synthetic", "image_size": size, "num_samples": batch * (steps + 1), "val_fraction": 0.01,
                    "test_fraction": 0},   # every image trains: the steps measured are the steps asked for
        "model": {"name": model}, "trainer": {"epochs": 3, "per_gpu_batch_size": batch, "precision": precision,
                                              "schedule": "constant", "lr": 0.01}})


def bare_loop(cfg, steps: int):
    """The plainest fast loop: the same model, batch, bf16 autocast, channels_last, data as
    uint8 on the device, one optimizer step per batch, no host reads. Returns run(), which trains
    ``steps`` steps and returns the images it trained."""
    import torch
    from tunesmith.trainables import data as data_mod
    from tunesmith.trainables.models import build_model
    from tunesmith.trainables.optimizers import build_optimizer
    device = _device()
    data = data_mod.load(cfg.dataset, device)
    model = build_model(cfg.model, data.shape, data.num_classes).to(device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg.trainer, cfg.trainer.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    batch = cfg.trainer.per_gpu_batch_size
    n = len(data.train_y)

    def run(count=steps):
        perm = torch.randperm(n, device=data.train_x.device)
        for i in range(count):
            idx = perm[(i * batch) % (n - batch + 1):][:batch]
            x = data.normalise(data.train_x[idx])
            if on_gpu:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
                loss = loss_fn(model(x).float(), data.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return count * batch
    run(3)   # warm-up: allocation and the first calls
    return run


def trainer_loop(cfg, sync_every=None):
    """tunesmith's own epoch loop (Trainer.train_epoch) on the same data, one warm-up epoch
    run. Returns run(), which trains one epoch and returns the images it trained."""
    from tunesmith.trainables.trainer import Trainer
    trainer = Trainer(cfg, sync_every=sync_every)
    trainer.train_epoch(0)   # warm-up epoch

    def run():
        out = trainer.train_epoch(1)
        assert "train_loss" in out, out
        return trainer.steps_per_epoch * trainer.global_batch
    return run


def images_per_s(loops, rounds: int = 3):
    """{name: images per second} of each loop, the best of ``rounds`` timings taken in turn, so
    that a clock ramp or a neighbour's burst weighs on every loop alike."""
    best = dict.fromkeys(loops, 0.0)
    for _ in range(rounds):
        for name, run in loops.items():
            _sync()
            began = time.perf_counter()
            images = run()
            _sync()
            best[name] = max(best[name], images / (time.perf_counter() - began))
    return best


def case_throughput(kind: str):
    rows = []
    for model, size, batch, steps in SIZES["throughput"][kind]:
        cfg = _synthetic(model, size, batch, steps)
        _peak_reset()
        got = images_per_s({"bare": bare_loop(cfg, steps), "trainer": trainer_loop(cfg),
                            "synced": trainer_loop(cfg, sync_every=1)})
        bare, ours, synced = got["bare"], got["trainer"], got["synced"]
        rows.append({"case": f"throughput {model} {size}px batch {batch}", "bare_img_s": round(bare, 1),
                     "trainer_img_s": round(ours, 1), "trainer_share": round(ours / bare, 3),
                     "per_step_sync_img_s": round(synced, 1), "sync_share": round(synced / bare, 3),
                     "goal": "trainer_share >= 0.9", "met": ours / bare >= 0.9, "peak_mb": _peak_mb()})
    return rows


def _tunesmith(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "tunesmith.orchestrator", *args], capture_output=True,
                          text=True, timeout=timeout)


def _epochs(root: str, sweep: str):
    import pyarrow.dataset as pds
    return pds.dataset(os.path.join(root, sweep, "epochs"), format="parquet").to_table().to_pandas()


def case_share(kind: str, root: str, gpu: bool):
    """Four trials sharing the device against one holding it whole (a seed study: the same
    configuration, four seeds at once), through tunesmith's own sweep on one Ray instance (two
    in the CPU smoke run)."""
    import ray
    from common import start
    from tunesmith.orchestrator import spec as spec_mod
    from tunesmith.orchestrator.sweep import run_sweep
    s = SIZES["share"][kind]
    # joins the Ray instance already up in this process, if any (the test suite's); on a GPU
    # machine every CPU, so that four trials at cpus 1 run at once
    cluster, _ = start(None if gpu else 2)
    rows = []
    try:
        for name, trials in (("one", 1), ("many", s["trials"])):
            share = 1.0 / trials
            resources = {"gpus": share, "cpus": 1} if gpu else {"cpus": 2 / trials}
            spec = spec_mod.from_dict({
                "name": f"share-{name}", "results_dir": root, "asha": {"enabled": False}, "resources": resources,
                "confirm": {"top": 0},   # the trials at once are the measure; a confirmation would add its own
                "dataset": {"name": "synthetic", "image_size": s["size"], "num_samples": s["samples"]},
                "model": {"name": "small_cnn"}, "trainer": {"epochs": s["epochs"], "per_gpu_batch_size": s["batch"]},
                "search": {"num_samples": trials}})
            began = time.time()
            run_sweep(spec, cluster, progress=False)
            ep = _epochs(root, f"share-{name}")
            per_trial = ep.groupby("trial_id").samples_per_second.mean()
            rows.append({"case": f"{trials} trial(s) at gpus {share:g}" if gpu else f"{trials} trial(s) on 2 CPUs",
                         "total_img_s": round(float(per_trial.sum()), 1), "trials": int(len(per_trial)),
                         "wall_s": round(time.time() - began, 1),
                         "peak_mb": None if ep.gpu_mem_mb.isna().all() else round(float(ep.gpu_mem_mb.max()), 1)})
    finally:
        if cluster.started_here:
            ray.shutdown()   # smith, next, starts its own
    rows[1]["vs_one"] = round(rows[1]["total_img_s"] / rows[0]["total_img_s"], 3)
    return rows


def case_batch(kind: str):
    from tunesmith.trainables.batch_finder import find
    from tunesmith.trainables.config import TrainConfig
    model, size = SIZES["batch"][kind]
    cfg = TrainConfig.from_dict({"dataset": {"name": "synthetic", "image_size": size, "num_samples": 4096},
                                 "model": {"name": model}})
    _peak_reset()
    began = time.perf_counter()
    found = find(cfg, memory_budget_bytes=None if kind == "gpu" else 64 << 20, max_batch=None if kind == "gpu" else 256)
    return [{"case": f"batch finder {model} {size}px", "per_gpu_batch_size": found.per_gpu_batch_size,
             "largest_fit": found.largest_fit, "limit": found.limit, "wall_s": round(time.perf_counter() - began, 2),
             "peak_mb": _peak_mb()}]


def case_precision(kind: str):
    """The same runs (seeds, data order) in bf16 autocast and in fp32: the means over the seeds,
    and the seeds' own spread, against which a gap between the two can be read."""
    import statistics
    from tunesmith.trainables.config import TrainConfig
    from tunesmith.trainables.trainer import Trainer
    p = SIZES["precision"][kind]
    acc = {}
    _peak_reset()
    for precision in ("bf16", "fp32"):
        acc[precision] = []
        for seed in range(p["seeds"]):
            cfg = TrainConfig.from_dict({"dataset": {"name": p["dataset"]}, "seed": seed,
                                         "trainer": {"epochs": p["epochs"], "precision": precision}})
            acc[precision].append([m for m in Trainer(cfg, cpu_threads=2).run()][-1]["val_acc"])
    mean = {k: statistics.fmean(v) for k, v in acc.items()}
    gap = abs(mean["bf16"] - mean["fp32"]) * 100
    sd = statistics.stdev(acc["bf16"] + acc["fp32"]) * 100 if p["seeds"] > 1 else None
    return [{"case": f"bf16 vs fp32 on {p['dataset']}, {p['epochs']} epochs, {p['seeds']} seed(s)",
             "bf16_val_acc": round(mean["bf16"], 4), "fp32_val_acc": round(mean["fp32"], 4),
             "gap_pp": round(gap, 2), "seed_sd_pp": None if sd is None else round(sd, 2),
             "each_bf16": [round(a, 4) for a in acc["bf16"]], "each_fp32": [round(a, 4) for a in acc["fp32"]],
             "goal": "gap_pp <= 0.5", "met": gap <= 0.5, "peak_mb": _peak_mb()}]


class Utilisation(threading.Thread):
    """The GPU's utilisation, sampled from nvidia-smi twice a second while a command runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples, self.stop = [], threading.Event()

    def run(self):
        while not self.stop.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5)
                self.samples.append(float(out.stdout.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return

    def mean(self):
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def case_smith(kind: str, root: str, gpu: bool):
    s = SIZES["smith"][kind]
    spec = os.path.join(root, "smith.yaml")
    with open(spec, "w") as fh:
        json.dump({"dataset": {"name": s["dataset"]}, "results_dir": root, "time_budget_s": s["budget"],
                   "resources": {"gpus": 0.25} if gpu else {"cpus": 1}}, fh)
    util = Utilisation()
    if gpu:
        util.start()
    began = time.time()
    samples = ["--samples", str(s["samples"])] if s["samples"] else []
    cpus = str(os.cpu_count() if gpu else 2)   # on a GPU machine, every CPU: trials at gpus 0.25 run 4 at once
    out = _tunesmith("smith", spec, "--name", "smith", "--num-cpus", cpus, *samples)
    util.stop.set()
    if out.returncode != 0:
        raise RuntimeError(f"smith: {out.stderr[-2000:]}")
    print(out.stdout[-1500:], file=sys.stderr)   # smith's own last lines, to read the figures by
    with open(os.path.join(root, "smith", "smith.json")) as fh:
        report = json.load(fh)
    ep = _epochs(root, report["stage2"]["name"])
    first = ep.timestamp.min().timestamp() - report["started_at_unix"]
    return [{"case": f"smith on {s['dataset']}, {s['budget']} s budget", "first_epoch_s": round(first, 1),
             "best_val_acc": report["result"]["value"], "gpu_util_pct": util.mean(),
             "stage1_points": report["stage1"]["points"], "stage2_trials": report["stage2"]["trials"],
             "stage2_s": report["stage2"]["seconds"],
             "wall_s": round(time.time() - began, 1),
             "peak_mb": None if ep.gpu_mem_mb.isna().all() else round(float(ep.gpu_mem_mb.max()), 1)}]


def render(rows) -> str:
    from tunesmith.orchestrator.tables import plain
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "case"))
    body = [[r["case"], ", ".join(f"{k} {r[k]}" for k in keys if k in r)] for r in rows]
    return plain(["case", "figures"], body)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="every case on the CPU in tiny sizes")
    p.add_argument("--out", default="gpu_check.json", help="where the table goes as JSON")
    args = p.parse_args(argv)
    import torch
    gpu = torch.cuda.is_available() and not args.smoke
    kind = "gpu" if gpu else "smoke"
    if not gpu and not args.smoke:
        print("gpu_check: no GPU here; --smoke runs every case on the CPU in tiny sizes", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    began = time.time()
    device = torch.cuda.get_device_name(0) if gpu else "cpu (smoke)"
    rows = []
    with tempfile.TemporaryDirectory(prefix="tunesmith-gpu-check-") as root:
        for name, case in (("throughput", lambda: case_throughput(kind)), ("batch", lambda: case_batch(kind)),
                           ("precision", lambda: case_precision(kind)),
                           ("share", lambda: case_share(kind, root, gpu)),
                           ("smith", lambda: case_smith(kind, root, gpu))):
            t0, first = time.time(), len(rows)
            try:
                rows += case()
            except Exception as exc:   # noqa: BLE001 - one case failing still leaves the others' figures
                rows.append({"case": name, "error": f"{type(exc).__name__}: {str(exc)[-500:]}"})
            print(f"[{time.time() - began:6.1f}s] {name} done in {time.time() - t0:.1f}s: "
                  f"{json.dumps(rows[first:], default=str)}", file=sys.stderr, flush=True)
            # written after each case: a machine lent for minutes may be taken back before the last
            result = {"device": device, "torch": torch.__version__, "seconds": round(time.time() - began, 1),
                      "rows": rows}
            with open(args.out, "w") as fh:
                json.dump(result, fh, indent=2, default=str)
    print(f"gpu_check on {device}, {result['seconds']} s\n" + render(rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
