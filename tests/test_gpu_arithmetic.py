"""The arithmetic that decides how a trial uses GPUs, checked without one: the visible GPUs are
what torch.cuda reports (patched here), and the device is only a name; every check that needs
real kernels is in bench/gpu_check.py."""
import pytest
import torch

from tunesmith.cluster.connect import ClusterInfo
from tunesmith.orchestrator.spec import from_dict
from tunesmith.orchestrator.sweep import concurrency_for, trial_resources
from tunesmith.trainables.config import TrainerConfig
from tunesmith.trainables.trainer import device_count, device_plan, pick_device

CUDA = torch.device("cuda")


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


@pytest.mark.parametrize("held,expected", [(None, 4), (2, 2), (0.25, 1), (0.5, 1), (8, 4)])
def test_the_devices_a_trial_trains_on(four_gpus, held, expected):
    """Whole GPUs held share the batch; a fraction is one device; never more than are visible."""
    assert device_count(CUDA, held) == expected


def test_a_trial_without_gpus_trains_on_the_cpu_beside_visible_gpus(four_gpus):
    assert pick_device(0) == torch.device("cpu") and pick_device(0.25) == CUDA and pick_device(None) == CUDA
    assert device_count(torch.device("cpu"), 2) == 1


@pytest.mark.parametrize("devices,scale,batch,lr", [(1, False, 64, 0.1), (4, False, 256, 0.1), (4, True, 256, 0.4)])
def test_the_batch_scales_with_the_gpus_and_the_lr_only_when_asked(devices, scale, batch, lr):
    t = TrainerConfig(per_gpu_batch_size=64, lr=0.1, scale_lr=scale)
    global_batch, peak_lr, bf16, channels_last = device_plan(t, CUDA, devices)
    assert global_batch == batch and peak_lr == pytest.approx(lr) and bf16 and channels_last


@pytest.mark.parametrize("device,precision,bf16", [("cuda", "auto", True), ("cuda", "fp32", False),
                                                   ("cpu", "auto", False), ("cpu", "bf16", True)])
def test_precision_and_layout_by_device(device, precision, bf16):
    _, _, got, channels_last = device_plan(TrainerConfig(precision=precision), torch.device(device), 1)
    assert got is bf16 and channels_last is (device == "cuda")


@pytest.mark.parametrize("gpus,cluster_gpus,concurrent,reserved", [
    (0.25, 1, 4, {"cpu": 1.0, "gpu": 0.25}),    # four trials share one card
    (1, 2, 2, {"cpu": 1.0, "gpu": 1.0}),
    (2, 4, 2, {"cpu": 0.01}),                   # data-parallel: Ray Train's workers hold the GPUs
])
def test_concurrency_and_reservations_for_gpu_trials(gpus, cluster_gpus, concurrent, reserved):
    spec = from_dict({"resources": {"gpus": gpus, "cpus": 1}})
    cluster = ClusterInfo(address="local", cpus=16, gpus=cluster_gpus, nodes=1, started_here=True)
    assert concurrency_for(spec, cluster) == concurrent
    assert trial_resources(spec) == reserved
