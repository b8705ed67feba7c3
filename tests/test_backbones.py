"""Models by name from timm and torchvision, pretrained weights from the libraries' caches (never
downloaded: the tests plant their own files there), weight files of every kind, and the
fine-tuning knobs. No Ray."""
import os

import pytest
import torch

from tunesmith.trainables import backbones, data as data_mod
from tunesmith.trainables.config import ConfigError, ModelConfig, TrainConfig
from tunesmith.trainables.models import build_model, head_parameters
from tunesmith.trainables.trainer import Trainer


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    os.makedirs(tmp_path / "torch" / "hub" / "checkpoints")
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.mark.parametrize("name", ["timm:resnet10t", "torchvision:resnet18", "timm:efficientnet_b0"])
def test_library_models_are_sized_to_the_data(name):
    grey = build_model(ModelConfig(name=name), (1, 32, 32), 7)
    assert grey(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    assert "stride 1" in grey.stem_note   # 32 px: the small-image stem, and it says so
    colour = build_model(ModelConfig(name=name), (3, 64, 64), 5)
    assert colour(torch.zeros(2, 3, 64, 64)).shape == (2, 5)
    assert not hasattr(colour, "stem_note")
    head, body = head_parameters(colour)
    assert head and body and head[0].shape[0] == 5   # the head is the sized classifier


def test_small_stem_follows_the_spec():
    kept = build_model(ModelConfig(name="torchvision:resnet18", small_input=False), (3, 32, 32), 10)
    assert kept.conv1.stride == (2, 2) and not isinstance(kept.maxpool, torch.nn.Identity)
    asked = build_model(ModelConfig(name="torchvision:resnet18", small_input=True), (3, 96, 96), 10)
    assert asked.conv1.stride == (1, 1) and isinstance(asked.maxpool, torch.nn.Identity)


def test_unknown_names_are_one_line_errors():
    with pytest.raises(ConfigError) as err:
        build_model(ModelConfig(name="timm:resnt18"), (3, 32, 32), 10)
    assert err.value.field == "model.name" and "timm:resnet18" in str(err.value)   # the close names
    with pytest.raises(ConfigError, match="model.name = 'vgg': unknown"):
        TrainConfig.from_dict({"model": {"name": "vgg"}})
    with pytest.raises(ConfigError, match="model.pretrained"):
        TrainConfig.from_dict({"model": {"name": "small_cnn", "pretrained": True}})


def test_registry_reads_the_libraries():
    timm_names = backbones.registry("timm", "resnet18")
    assert "resnet18" in timm_names and "resnet18.a1_in1k" in timm_names
    assert backbones.registry("torchvision", "resnet1*") == ["resnet101", "resnet152", "resnet18"]
    assert backbones.parameter_count("torchvision", "resnet18") == 11_689_512


def test_pretrained_weights_come_from_the_cache_only(torch_home):
    cfg = ModelConfig(name="torchvision:resnet18", pretrained=True)
    with pytest.raises(ConfigError) as err:
        backbones.check(cfg)
    assert str(torch_home) in str(err.value) and "model.download" in str(err.value)
    import torchvision.models as tvm
    published = tvm.resnet18(weights=None)   # "pretrained": random weights planted where torchvision keeps them
    torch.save(published.state_dict(), torch_home / "resnet18-f37072fd.pth")
    backbones.check(cfg)
    net = build_model(cfg, (3, 64, 64), 4)
    assert torch.equal(net.layer1[0].conv1.weight, published.layer1[0].conv1.weight)
    assert net.fc.out_features == 4
    assert net.norm[0] == (0.485, 0.456, 0.406) and net.eval_crop == 0.875


def test_timm_pretrained_from_its_url_cache(torch_home):
    import timm
    published = timm.create_model("resnet10t")
    torch.save(published.state_dict(), torch_home / "resnet10t_176_c3-f3215ab1.pth")
    cfg = ModelConfig(name="timm:resnet10t.c3_in1k", pretrained=True)
    found = backbones.published("timm", "resnet10t.c3_in1k")
    assert found.file == str(torch_home / "resnet10t_176_c3-f3215ab1.pth"), found
    net = build_model(cfg, (1, 64, 64), 3)   # grey: timm sums the stem's three channels
    assert torch.allclose(net.conv1[0].weight, published.conv1[0].weight.sum(1, keepdim=True))
    assert net(torch.zeros(1, 1, 64, 64)).shape == (1, 3)


def _train_and_keep(tmp_path, dataset, epochs=2):
    cfg = TrainConfig.from_dict({"dataset": dataset, "trainer": {"epochs": epochs}})
    trainer = Trainer(cfg)
    path = tmp_path / "trainer.pt"
    for metrics in trainer.run():
        if metrics["done"]:
            torch.save(trainer.state_dict(), path)
    return path, metrics


def test_fine_tune_an_earlier_checkpoint_on_other_data(tmp_path):
    """Pretrain on one generated set (digits, 8 px, 10 classes), fine-tune on another (shapes at
    32 px, colour): the depth is the checkpoint's, the head is reported by name, the rest loads."""
    path, _ = _train_and_keep(tmp_path, {"name": "digits"}, epochs=3)
    state = torch.load(path, weights_only=True)
    cfg = TrainConfig.from_dict({"dataset": {"name": "synthetic", "num_samples": 64, "image_size": 16,
                                             "channels": 3, "num_classes": 4},
                                 "model": {"weights": str(tmp_path)}, "trainer": {"epochs": 1}})
    trainer = Trainer(cfg)
    assert trainer.net.depth == state["arch"]["depth"] == 2
    fit = trainer.net.fit
    assert fit.adapted == ["features.0.weight"] and any(m.startswith("head.3.weight") for m in fit.mismatched), fit
    assert torch.allclose(trainer.net.features[0].weight.cpu(), state["model"]["features.0.weight"].repeat(1, 3, 1, 1) / 3)
    assert "left as initialised (shape differs): " in trainer.model_notes
    assert torch.equal(trainer.net.features[4].weight.cpu(), state["model"]["features.4.weight"])
    assert list(trainer.run())[-1]["done"]


@pytest.mark.parametrize("kind", ["state_dict", "safetensors", "wrapped", "timm"])
def test_weight_files(tmp_path, kind):
    """A plain state dict, safetensors, one wrapped by DataParallel under "state_dict", and the
    checkpoint timm's train.py saves: its argparse.Namespace of arguments beside the weights."""
    source = build_model(ModelConfig(), (1, 8, 8), 10)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if kind == "safetensors":
        from safetensors.torch import save_file
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "w.pth"
        import argparse
        saved = {"state_dict": {f"module.{k}": v for k, v in state.items()}} if kind == "wrapped" else \
            {"epoch": 3, "arch": "small_cnn", "state_dict": state, "version": 2,
             "args": argparse.Namespace(model="small_cnn", lr=0.1, epochs=3)} if kind == "timm" else state
        torch.save(saved, path)
    net = build_model(ModelConfig(weights=str(path)), (1, 8, 8), 10)
    assert net.fit.loaded == net.fit.total and not net.fit.mismatched
    assert torch.equal(net.head[3].weight, source.head[3].weight)


@pytest.mark.parametrize("prefix", ["_orig_mod.", "model.", "_orig_mod.net."])
def test_a_prefix_all_the_files_names_share_is_stripped_where_that_fits_the_model(tmp_path, prefix):
    """torch.compile saves its module's tensors under '_orig_mod.', a LightningModule under its
    attribute's name: the names fit once that part is gone. A name without it stays, reported."""
    source = build_model(ModelConfig(), (1, 8, 8), 10)
    saved = {f"{prefix}{k}": v for k, v in source.state_dict().items()}
    saved["loss.weight"] = torch.ones(10)   # beside the network, as a LightningModule's loss holds it
    torch.save({"state_dict": saved}, tmp_path / "w.ckpt")
    net = build_model(ModelConfig(weights=str(tmp_path / "w.ckpt")), (1, 8, 8), 10)
    assert net.fit.loaded == net.fit.total and net.fit.unexpected == ["loss.weight"]
    assert torch.equal(net.head[3].weight, source.head[3].weight)


def test_a_file_none_of_whose_tensors_fit_is_refused_not_trained_from_scratch(tmp_path):
    torch.save({"encoder.layer1.weight": torch.zeros(3, 3), "encoder.layer2.weight": torch.zeros(3)},
               tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"model.weights = .*other.pt.*none of its 2 tensors fits small_cnn: "
                                          r"the file names encoder.layer1.weight"):
        build_model(ModelConfig(weights=str(tmp_path / "other.pt")), (1, 8, 8), 10)


def test_validate_refuses_a_file_none_of_whose_tensors_fit_before_anything_starts(tmp_path, capsys):
    """The spec's check builds the model on the meta device and reads the file's names: a
    file that fits nothing is one line and exit 2 before Ray starts; one that fits passes."""
    from tunesmith.orchestrator.cli import main
    torch.save({"encoder.layer1.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    fits = build_model(ModelConfig(name="timm:resnet10t"), (3, 32, 32), 4)
    torch.save({f"_orig_mod.{k}": v for k, v in fits.state_dict().items()}, tmp_path / "fits.pt")
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ndataset: {name: synthetic, image_size: 32, channels: 3}\nmodel: {name: timm:resnet10t}\n")
    capsys.readouterr()
    assert main(["validate", str(spec), "--set", f"model.weights={tmp_path / 'other.pt'}"]) == 2
    err = capsys.readouterr().err
    assert "model.weights" in err and "none of its 1 tensors fits timm:resnet10t" in err and err.count("\n") == 1
    assert main(["validate", str(spec), "--set", f"model.weights={tmp_path / 'fits.pt'}"]) == 0


def test_bad_weight_files(tmp_path):
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(ConfigError, match="model.weights = .*notes.txt.*not a PyTorch checkpoint") as bad:
        backbones.check(ModelConfig(weights=str(tmp_path / "notes.txt")))
    # torch's reason, not its paragraph on the weights_only default
    assert "Unsupported operand" in str(bad.value) and "2.6" not in str(bad.value) and "\n" not in str(bad.value)
    import fractions   # a checkpoint that pickles an object of a class: loading it runs that class's code
    torch.save({"model": {"w": torch.zeros(2)}, "x": fractions.Fraction(1, 3)}, tmp_path / "custom.pt")
    with pytest.raises(ConfigError, match="pickles code, not only tensors .*Fraction.*save the model's state_dict"):
        backbones.check(ModelConfig(weights=str(tmp_path / "custom.pt")))
    torch.save({"epochs": 3}, tmp_path / "meta.pt")
    with pytest.raises(ConfigError, match="holds no state dict"):
        backbones.check(ModelConfig(weights=str(tmp_path / "meta.pt")))
    with pytest.raises(ConfigError, match="no such file"):
        backbones.check(ModelConfig(weights=str(tmp_path / "absent.pt")))
    with pytest.raises(ConfigError, match="without trainer.pt"):
        backbones.check(ModelConfig(weights=str(tmp_path)))


def test_discriminative_lr_and_frozen_backbone():
    cfg = TrainConfig.from_dict({"dataset": {"name": "digits"}, "model": {"backbone_lr": 0.1, "freeze_epochs": 1},
                                 "trainer": {"epochs": 2, "schedule": "constant", "lr": 0.1}})
    trainer = Trainer(cfg)
    scales = sorted({g["lr_scale"] for g in trainer.optimizer.param_groups})
    assert scales == [0.1, 1.0]
    body = trainer.net.features[0].weight.detach().clone()
    head = trainer.net.head[3].weight.detach().clone()
    runs = trainer.run()
    next(runs)   # the first epoch: the head alone
    assert torch.equal(trainer.net.features[0].weight, body) and not torch.equal(trainer.net.head[3].weight, head)
    assert sorted({round(g["lr"], 6) for g in trainer.optimizer.param_groups}) == [0.01, 0.1]
    next(runs)   # then the whole network
    assert not torch.equal(trainer.net.features[0].weight, body)


def test_photo_augmentation_on_the_device():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    out = data_mod.augment(x, "photo", g, (0.5,) * 3, (0.25,) * 3)
    assert out.shape == x.shape and not torch.allclose(out, x)
    assert out.min() >= (0 - 0.5) / 0.25 - 1e-4 and out.max() <= (1 - 0.5) / 0.25 + 1e-4   # jitter clamps to [0, 1]
    again = data_mod.augment(x, ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter"],
                             torch.Generator().manual_seed(0), (0.5,) * 3, (0.25,) * 3)
    assert torch.equal(out, again)   # the names and the preset are one thing; a seed repeats it
    flipped = data_mod.augment(x, ["RandomHorizontalFlip"], torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) or torch.equal(a, b.flip(2)) for a, b in zip(x, flipped))
    with pytest.raises(ConfigError, match="dataset.augment.*RandomRotation"):
        TrainConfig.from_dict({"dataset": {"augment": ["RandomRotation"]}})
    assert data_mod.centre_crop(x, 0.5).shape == x.shape


def test_train_per_class_cuts_training_only():
    from tunesmith.trainables.config import DatasetConfig
    full = data_mod.load(DatasetConfig(name="digits"))
    cut = data_mod.load(DatasetConfig(name="digits", train_per_class=5))
    assert torch.bincount(cut.train_y).tolist() == [5] * 10
    assert torch.equal(cut.val_y, full.val_y)


def test_models_command_reads_the_registries(capsys):
    from tunesmith.orchestrator.cli import main
    assert main(["models", "resnet18"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["resnet18"] == "11.17M" and rows["torchvision:resnet18"] == "11.69M"
    assert rows["timm:resnet18.a1_in1k"] == "11.69M" and "timm:resnet18d" in rows
    assert main(["models", "no_such_net"]) == 1
    assert "no model matches 'no_such_net'" in capsys.readouterr().err


@pytest.mark.parametrize("sets,message", [
    (["model.name=timm:resnt18"], "model.name = 'timm:resnt18': timm has no model 'resnt18'"),
    (["model.name=torchvision:resnet18", "model.pretrained=true"], "model.pretrained = True: torchvision:resnet18"),
    (["model.weights=WEIGHTS"], "model.weights = "),
    (["search.space.model.name={choice: [small_cnn, 'timm:nope']}"], "search.model.name = 'timm:nope'"),
])
def test_bad_models_stop_before_ray(tmp_path, capsys, sets, message, torch_home, monkeypatch):
    """One line, exit 2, nothing written, and Ray never started."""
    from tunesmith.cluster import connect as connect_mod
    from tunesmith.orchestrator.cli import main

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started before the model was checked")
    monkeypatch.setattr(connect_mod, "connect", no_ray)
    (tmp_path / "w.txt").write_text("no")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: bad\nresults_dir: {tmp_path / 'results'}\n")
    argv = ["run", str(spec)]
    for s in sets:
        argv += ["--set", s.replace("WEIGHTS", str(tmp_path / "w.txt"))]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "results").exists()


def test_streaming_data_takes_the_weights_statistics(tmp_path):
    from PIL import Image
    from tunesmith.trainables import image_data
    from tunesmith.trainables.config import DatasetConfig
    for c in ("a", "b"):
        os.makedirs(tmp_path / c)
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * i, 100, 200)).save(tmp_path / c / f"{i}.png")
    stream = data_mod.load(DatasetConfig(name="imagefolder", data_dir=str(tmp_path), stream=True, image_size=8))
    other = image_data.with_stats(stream, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(other.normalise(x), torch.full((1, 3, 2, 2), 2.0))
    assert stream.mean != other.mean and other.train_files is stream.train_files
