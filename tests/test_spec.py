import os

import pytest

from tunesmith.orchestrator import spec as spec_mod
from tunesmith.orchestrator.cli import main
from tunesmith.trainables.config import ConfigError

GOOD = """
name: t
trainer: {epochs: 3, lr: 0.1}
search:
  algorithm: random
  num_samples: 4
  space:
    lr: {loguniform: [1e-3, 1]}
    weight_decay: {grid: [1e-4, 0]}
results_dir: RESULTS
"""




def test_good_spec_parses_with_typed_values(tmp_path, spec_file):
    s = spec_mod.load(spec_file(GOOD))
    assert s.name == "t" and s.train.trainer.lr == 0.1
    lr = s.plan.space[0]
    assert (lr.kind, lr.low, lr.high) == ("loguniform", 1e-3, 1.0)   # "1e-3" from YAML became a float
    assert spec_mod.trial_count(s) == 8
    assert s.max_t == 3


BAD = [
    ("unknown top-level key", {"epochs": 3}, "epochs = 3: unknown key"),
    ("unknown trainer key", {"trainer": {"lrr": 1}}, "trainer.lrr = 1: unknown key"),
    ("non-positive lr", {"trainer": {"lr": 0}}, "trainer.lr = 0: must be > 0"),
    ("negative lr", {"trainer": {"lr": -0.1}}, "trainer.lr = -0.1: must be > 0"),
    ("zero batch", {"trainer": {"per_gpu_batch_size": 0}}, "trainer.per_gpu_batch_size = 0: must be > 0"),
    ("unknown model", {"model": {"name": "vgg"}}, "model.name = 'vgg': unknown; choose from"),
    ("unknown optimizer", {"trainer": {"optimizer": "lamb"}}, "trainer.optimizer = 'lamb': unknown"),
    ("unknown dataset", {"dataset": {"name": "imagenet"}}, "dataset.name = 'imagenet': unknown"),
    ("unknown schedule", {"trainer": {"schedule": "cosine"}}, "trainer.schedule = 'cosine'"),
    ("min above max", {"search": {"space": {"lr": {"uniform": [1, 0.1]}}}},
     "search.space.lr.uniform = [1, 0.1]: low 1 must be below high 0.1"),
    ("bad confirm seeds", {"confirm": {"seeds": 0}}, "confirm.seeds = 0: must be auto or a whole number from 1 to 100"),
    ("momentum bounds crossed", {"trainer": {"min_momentum": 0.97, "max_momentum": 0.9}},
     "trainer.min_momentum = 0.97: must not exceed"),
    ("loguniform at zero", {"search": {"space": {"lr": {"loguniform": [0, 1]}}}}, "must be > 0"),
    ("bad value inside a choice", {"search": {"space": {"optimizer": {"choice": ["sgd", "lamb"]}}}},
     "search.space.optimizer = 'lamb'"),
    ("negative lr in a grid", {"search": {"space": {"lr": {"grid": [0.1, -1]}}}}, "search.space.lr = -1"),
    ("unknown searched setting", {"search": {"space": {"foo": {"choice": [1]}}}}, "no such trainer field"),
    ("unknown space kind", {"search": {"space": {"lr": {"normal": [0, 1]}}}}, "unknown kind 'normal'"),
    ("grid under tpe", {"search": {"algorithm": "tpe", "space": {"lr": {"grid": [0.1]}}}}, "tpe cannot search a grid"),
    ("grid under quasi", {"search": {"algorithm": "quasi", "space": {"lr": {"grid": [0.1]}}}},
     "quasi cannot search a grid"),
    ("unknown algorithm", {"search": {"algorithm": "bohb"}}, "search.algorithm = 'bohb'"),
    ("coupling under random", {"search": {"lr_momentum_ref": 0.9, "space": {
        "lr": {"loguniform": [0.01, 1]}, "momentum": {"choice": [0.9, 0.99]}}}},
     "search.lr_momentum_ref = 0.9: only the quasi search"),
    ("coupling without a momentum", {"search": {"algorithm": "quasi", "lr_momentum_ref": 0.9,
                                                "space": {"lr": {"loguniform": [0.01, 1]}}}},
     "search.lr_momentum_ref = 0.9: needs max_momentum or momentum"),
    ("coupling at momentum 1", {"search": {"algorithm": "quasi", "lr_momentum_ref": 1}}, "search.lr_momentum_ref = 1"),
    ("point outside space", {"search": {"space": {"lr": {"uniform": [0.01, 0.1]}},
                                        "points_to_evaluate": [{"lr": 0.5}]}}, "outside the space"),
    ("grace above max_t", {"trainer": {"epochs": 3}, "asha": {"grace_period": 5}}, "asha.grace_period = 5"),
    ("fractional gpus above one", {"resources": {"gpus": 1.5}}, "resources.gpus = 1.5"),
    ("unknown metric", {"metric": "f1"}, "metric = 'f1': unknown"),
    ("bad mode", {"mode": "up"}, "mode = 'up'"),
    ("bad number", {"trainer": {"lr": "fast"}}, "trainer.lr = 'fast': must be a number"),
    ("bool for int", {"trainer": {"epochs": True}}, "trainer.epochs = True: must be an integer"),
    ("bad name", {"name": "a b"}, "name = 'a b'"),
    ("image folder without a path", {"dataset": {"name": "imagefolder"}},
     "dataset.data_dir = None: imagefolder needs a data_dir"),
    ("torchvision set without a path", {"dataset": {"name": "cifar10"}},
     "dataset.data_dir = None: cifar10 needs a data_dir (or download: true)"),
]


@pytest.mark.parametrize("label,raw,message", BAD, ids=[b[0] for b in BAD])
def test_bad_values_name_field_and_value(label, raw, message):
    with pytest.raises(ConfigError) as err:
        spec_mod.from_dict(raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_grace_period_beyond_the_epochs_is_refused_only_while_asha_prunes():
    """`--set trainer.epochs=1 --set asha.enabled=false` on a spec whose ASHA has grace 3: with
    ASHA off the grace is never read, so the spec is good (it was refused)."""
    raw = {"trainer": {"epochs": 1}, "asha": {"grace_period": 3}}
    with pytest.raises(ConfigError, match="asha.grace_period = 3"):
        spec_mod.from_dict(raw)
    s = spec_mod.from_dict({**raw, "asha": {"grace_period": 3, "enabled": False}})
    assert s.max_t == 1 and s.rungs == () and s.milestones == ()


def test_overrides_are_yaml_and_dotted(tmp_path, spec_file):
    s = spec_mod.load(spec_file(GOOD), ["trainer.lr=0.3", "model.width=64",
                                             "search.space.model.width={choice: [8, 16]}"])
    assert s.train.trainer.lr == 0.3 and s.train.model.width == 64
    assert [d.key for d in s.plan.space] == ["lr", "weight_decay", "model.width"]



def test_relative_local_paths_are_anchored_where_the_command_runs(tmp_path, monkeypatch):
    """A trial runs in its own folder: relative data and weights paths are made absolute on
    loading, from the command's folder; `~`, absolute paths and a submitted job's spec (env:)
    are left as written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("dataset: {name: imagefolder, data_dir: photos/train}\n")
    spec = spec_mod.load("s.yaml", ["model.weights=../w.pt"])
    assert spec.dataset.data_dir == str(tmp_path / "photos" / "train")
    assert spec.model.weights == os.path.join(os.path.dirname(tmp_path), "w.pt")
    spec = spec_mod.load("s.yaml", ["dataset.data_dir=~/photos", "model.weights=/abs/w.pt"])
    assert (spec.dataset.data_dir, spec.model.weights) == ("~/photos", "/abs/w.pt")
    monkeypatch.setenv("JOB_SPEC", "name: job\ndataset: {name: imagefolder, data_dir: photos}\n")
    assert spec_mod.load("env:JOB_SPEC").dataset.data_dir == "photos"

def test_points_are_completed_from_the_spec():
    s = spec_mod.from_dict({"trainer": {"momentum": 0.9},
                            "search": {"space": {"lr": {"loguniform": [1e-3, 1]}, "momentum": {"choice": [0.9, 0.95]}},
                                       "points_to_evaluate": [{"lr": 0.1}]}})
    assert s.plan.points_to_evaluate == ({"lr": 0.1, "momentum": 0.9},)


CLI_BAD = [
    (["run", "missing.yaml"], "spec = 'missing.yaml': no such file"),
    (["run", "SPEC", "--set", "trainer.lr=-1"], "trainer.lr = -1: must be > 0"),
    (["run", "SPEC", "--set", "nonsense"], "--set = 'nonsense': must be KEY=VALUE"),
    (["run", "SPEC", "--set", "dataset.name=mnist", "--set", "dataset.data_dir=NOWHERE"], "mnist not found"),
    (["run", "SPEC", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize("argv,message", CLI_BAD, ids=[m for _, m in CLI_BAD])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, message, spec_file):
    spec = spec_file(GOOD)
    argv = [a.replace("SPEC", spec).replace("NOWHERE", str(tmp_path / "nowhere")) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("tunesmith: error:") and message in err
    assert not os.path.exists(tmp_path / "results")


def test_cli_refuses_to_overwrite_an_existing_sweep(tmp_path, capsys, spec_file):
    spec = spec_file(GOOD)
    old = tmp_path / "results" / "t"
    old.mkdir(parents=True)
    (old / "trials.parquet").write_bytes(b"precious")
    assert main(["run", spec]) == 2
    assert "already holds a sweep" in capsys.readouterr().err
    assert (old / "trials.parquet").read_bytes() == b"precious"


@pytest.mark.parametrize("seed,says", [(-1, "seed = -1: must be >= 0"),
                                       (2**32, "seed = 4294967296: must be <= 4294967295")])
def test_a_seed_the_search_generators_cannot_take_is_refused(tmp_path, capsys, spec_file, seed, says):
    """numpy's generators (random, grid and quasi search) refused -1 and hyperopt's (TPE) 2**32,
    once the sweep had started; an int bound is given whole."""
    assert main(["validate", spec_file(GOOD), "--set", f"seed={seed}"]) == 2
    assert says in capsys.readouterr().err
    assert main(["validate", spec_file(GOOD), "--set", f"seed={2**32 - 1}"]) == 0


def test_validate_command(tmp_path, capsys, spec_file):
    assert main(["validate", spec_file(GOOD)]) == 0
    assert "8 trials" in capsys.readouterr().out


@pytest.mark.parametrize("search,says", [
    ("", "1 trial: the spec's own settings (no search space), then the best confirmed with 1 new seed (2 where "
         "they fit: confirm.seeds auto) beside its own whole run"),   # no more finalists than trials (it said 'the 2 best')
    # one setting: one finalist (it said 'the 2 best', then confirmed 1)
    ("search: {num_samples: 4}\n", "4 trials: a seed-variance study (the spec's own settings, each trial with its "
                                   "own seed), then the best confirmed with 1 new seed (2 where they fit: "
                                   "confirm.seeds auto) beside its own whole run"),
    ("search: {presets: [lr_decades]}\n", "7 trials: random search over lr, then the 2 best confirmed with 1 new "
                                          "seed each (2 where they fit: confirm.seeds auto) beside their own whole runs"),
    ("search: {presets: [lr_decades]}\nconfirm: {seeds: 1}\n", "then the 2 best confirmed with 1 new seed each beside"),
    ("search: {presets: [lr_decades]}\nconfirm: {top: 3, seeds: 2}\n", "over lr, then the 3 best confirmed with 2 new seeds each"),
    ("confirm: {top: 0}\n", "1 trial: the spec's own settings (no search space)\n"),
    # a time budget may end the search sooner: smith's "1000 trials" ran 836
    ("search: {presets: [lr_decades]}\ntime_budget_s: 60\n", "valid; sweep 's', up to 7 trials: random search"),
])
def test_validate_says_what_the_sweep_will_be(tmp_path, capsys, search, says):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ndataset: {name: digits}\n" + search)
    assert main(["validate", str(spec)]) == 0
    assert says in capsys.readouterr().out


def test_example_specs_are_valid():
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    names = [f for f in os.listdir(root) if f.endswith(".yaml")]
    assert names
    for name in names:
        spec_mod.load(os.path.join(root, name))


# --- the JSON Schema for editors ---------------------------------------------------------------

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _validator():
    import jsonschema
    schema = spec_mod.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_every_example_validates_against_the_schema_and_names_it():
    import yaml
    validator = _validator()
    names = sorted(n for n in os.listdir(EXAMPLES) if n.endswith((".yaml", ".yml")))
    assert names
    for name in names:
        with open(os.path.join(EXAMPLES, name), encoding="utf-8") as fh:
            text = fh.read()
        assert text.startswith("# yaml-language-server: $schema=tunesmith.schema.json\n"), name
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(text))]
        assert errors == [], (name, errors)
        spec_mod.load(os.path.join(EXAMPLES, name))   # and tunesmith agrees


def test_the_committed_schema_is_the_generated_one(capsys):
    """Editors read examples/tunesmith.schema.json; it must not drift from the models."""
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    with open(os.path.join(EXAMPLES, "tunesmith.schema.json"), encoding="utf-8") as fh:
        assert fh.read() == printed


@pytest.mark.parametrize("label,raw,message", [b for b in BAD if b[0] in {
    "unknown top-level key", "unknown trainer key", "non-positive lr", "zero batch", "unknown model",
    "unknown optimizer", "unknown schedule", "unknown space kind", "unknown algorithm", "unknown metric",
    "bad mode", "bad number", "bool for int", "bad name"}])
def test_the_schema_refuses_what_tunesmith_refuses(label, raw, message):
    """An editor flags the same mistakes while the spec is typed."""
    raw = {k: v for k, v in raw.items()}
    assert list(_validator().iter_errors(raw)), label


def test_schema_offers_choices_and_descriptions():
    schema = spec_mod.json_schema()
    trainer = schema["$defs"]["TrainerConfig"]["properties"]
    assert trainer["optimizer"]["enum"] == ["sgd", "adam", "adamw", "rmsprop", "rprop"]
    assert trainer["lr"]["exclusiveMinimum"] == 0 and "peak LR" in trainer["lr"]["description"]
    presets = schema["$defs"]["SearchFile"]["properties"]["presets"]["anyOf"][0]["items"]["enum"]
    assert "momentum" in presets


def test_schema_to_a_folder_that_does_not_exist_is_bad_input(tmp_path, capsys):
    out = tmp_path / "missing" / "schema.json"
    assert main(["schema", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--output = '{out}'" in err and err.count("\n") == 1
    assert not out.parent.exists()


# --- values that were accepted but wrong (issue #30) -----------------------------------------

@pytest.mark.parametrize("raw,field,problem", [
    ({"search": {"space": {"lr": {"choice": [0.1, 0.2]}, "trainer.lr": {"choice": [0.3]}}}},
     "search.space.trainer.lr", "the same setting as search.space.lr"),
    ({"search": {"algorithm": "grid", "space": {"lr": {"grid": [0.1, 0.1, 0.1]}}}},
     "search.space.lr", "0.1 is listed more than once"),
    ({"trainer": {"epochs": 10}, "asha": {"max_t": 100}}, "asha.max_t", "must not exceed trainer.epochs (10)"),
])
def test_values_that_would_run_wrong_are_refused(raw, field, problem):
    with pytest.raises(ConfigError) as err:
        spec_mod.from_dict(raw)
    assert err.value.field == field and problem in err.value.problem


def test_a_huge_grid_walk_is_refused_before_it_is_built():
    import time
    began = time.perf_counter()
    with pytest.raises(ConfigError, match="a sweep runs at most 1,000,000") as err:
        spec_mod.from_dict({"search": {"algorithm": "grid", "num_samples": 100_000_000,
                                       "space": {"lr": {"grid": [0.1, 0.01]}}}})
    assert err.value.field == "search.num_samples"
    assert time.perf_counter() - began < 2   # no 200-million-entry walk was built to say so


def test_a_yaml_alias_bomb_is_one_short_line(tmp_path, capsys, spec_file):
    levels = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = spec_file("\n".join(levels) + "\ntrainer: {lr: *a8}\n")
    assert main(["validate", path]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tunesmith: error: trainer.lr = [[[") and len(err) < 300 and "\n" not in err
