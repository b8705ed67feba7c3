"""`tunesmith analyze` on small saved sweeps written by the real writer."""
import csv
import io
import json

import pytest

from tunesmith.orchestrator.cli import main
from tunesmith.orchestrator.callback import LedgerCallback
from tunesmith.cluster.storage import Storage


def _sweep(root, name, lrs, widths, good_lr=0.1):
    w = LedgerCallback(Storage(str(root)), name, ["lr", "model.width"], {"lr": [], "model.width": [16, 32]},
                      epochs=3, metric="val_acc", mode="max", pruned={})
    (root / name).mkdir(exist_ok=True)
    (root / name / "spec.yaml").write_text("metric: val_acc\nmode: max\n")
    for i, (lr, width) in enumerate(zip(lrs, widths)):
        tid = f"{name}_{i:03d}"
        w.start(tid, {"lr": lr, "model.width": width})
        for e in (1, 2, 3):
            acc = max(0.0, 0.99 - abs(lr - good_lr) - (0.05 if width == 16 else 0)) * e / 3
            w.record(tid, {"training_iteration": e, "val_acc": acc, "val_loss": 1 - acc})
        w.finish(tid)
    w.close()


@pytest.fixture
def results(tmp_path):
    lrs = [0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 0.1, 0.3]
    widths = [16, 32, 32, 16, 32, 16, 16, 32]
    _sweep(tmp_path, "alpha", lrs, widths)
    _sweep(tmp_path, "beta", lrs, widths, good_lr=0.4)
    return tmp_path


def test_table_lists_best_effects_status_and_side_by_side(results, capsys):
    assert main(["analyze", str(results), "--plots", str(results / "plots")]) == 0
    out = capsys.readouterr().out
    assert "sweep alpha: 8 trials" in out and "sweep beta: 8 trials" in out
    assert "status: 8 completed" in out
    assert "hyperparameter importance" in out and "val_acc by model.width" in out
    assert "sweeps side by side" in out
    best_line = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    assert "alpha_002" in best_line   # lr 0.1, width 32: the best by construction
    for kind in ("curves", "lr", "parallel"):
        png = results / "plots" / f"alpha-{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_ranks_lr_first_when_it_drives_the_metric(results, capsys):
    assert main(["analyze", str(results), "--sweep", "alpha", "--format", "json", "--no-plots"]) == 0
    data = json.loads(capsys.readouterr().out)
    (s,) = data["sweeps"]
    assert s["best"][0]["trial_id"] == "alpha_002" and s["best"][0]["model.width"] == 32
    assert s["effects"][0]["hparam"] == "lr"
    assert 0 < s["effects"][0]["importance"] <= 1
    width = next(e for e in s["effects"] if e["hparam"] == "model.width")
    assert {b["bin"] for b in width["bins"]} == {"16", "32"}
    assert s["status"] == {"completed": 8}


def test_side_by_side_compares_best_and_importance(results, capsys):
    assert main(["analyze", str(results), "--format", "json", "--no-plots"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["sweep"]: r for r in data["compare"]}
    assert set(rows) == {"alpha", "beta"}
    for row in rows.values():
        assert row["trials"] == 8 and row["completed"] == 8 and row["metric"] == "val_acc"
        assert 0 <= row["importance lr"] <= 1 and "importance model.width" in row
    assert rows["alpha"]["best_trial"] == "alpha_002" and rows["beta"]["best_trial"] == "beta_004"


def test_csv_is_one_table_with_sections(results, capsys):
    assert main(["analyze", str(results / "beta"), "--format", "csv", "--no-plots"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["section"] for r in rows} == {"best", "effect", "status"}
    assert all(r["sweep"] == "beta" for r in rows)
    best = [r for r in rows if r["section"] == "best"]
    assert json.loads(best[0]["hparams"])["lr"] == 0.4


@pytest.mark.parametrize("setup,message", [
    ("missing", "no such directory"),
    ("empty", "no sweeps found"),
    ("corrupt", "not a readable Parquet file"),
])
def test_bad_results_are_one_line_exit_2(tmp_path, capsys, setup, message):
    target = tmp_path / "r"
    if setup != "missing":
        target.mkdir()
    if setup == "corrupt":
        (target / "s").mkdir()
        (target / "s" / "trials.parquet").write_bytes(b"PAR1 this is not parquet")
    assert main(["analyze", str(target), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_top_must_be_positive(results, capsys):
    assert main(["analyze", str(results), "--top", "0"]) == 2
    assert "--top = 0: must be >= 1" in capsys.readouterr().err


def test_a_plots_folder_that_cannot_be_written_is_one_line_exit_2(results, tmp_path, capsys):
    """It was a traceback from os.makedirs: a --plots folder it cannot make, or a read-only
    results folder's default _analysis/."""
    blocked = tmp_path / "a file"
    blocked.write_text("")
    assert main(["analyze", str(results), "--plots", str(blocked / "plots")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--plots = " in err and "cannot be written" in err and "--no-plots" in err


def test_unknown_sweep_names_the_choices(results, capsys):
    assert main(["analyze", str(results), "--sweep", "gamma", "--no-plots"]) == 2
    assert "alpha, beta" in capsys.readouterr().err


def test_a_decade_grid_is_shown_per_value_not_in_bins(tmp_path):
    """Issue #7: 7 decades fell into 4 quantile bins, averaging 1e-2 (the best) with failing
    neighbours. Few distinct values are shown one by one."""
    from tunesmith.orchestrator import analyze
    decades = [0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7]
    w = LedgerCallback(Storage(str(tmp_path)), "dec", ["lr"], {"lr": decades}, epochs=1, metric="val_acc",
                      mode="max", pruned={})
    (tmp_path / "dec").mkdir(exist_ok=True)
    (tmp_path / "dec" / "spec.yaml").write_text("metric: val_acc\nmode: max\n")
    for i, lr in enumerate(decades):
        w.start(f"t{i}", {"lr": lr})
        w.record(f"t{i}", {"training_iteration": 1, "val_acc": 0.949 if lr == 0.01 else 0.1 + 0.01 * i})
        w.finish(f"t{i}")
    w.close()
    (s,) = [analyze.summary(sw, 3) for sw in analyze.load(str(tmp_path), None)]
    (lr,) = s["effects"]
    assert len(lr["bins"]) == 7
    assert next(b for b in lr["bins"] if b["bin"] == "0.01")["mean"] == pytest.approx(0.949)
    # one trial per decade: as groups they would explain all the variance whatever the scores
    # (importance 1, p = 1, as `analyze` said of a random search's 8 trials); the importance is
    # taken over quantile bins of the values instead, and says so
    assert lr["binned"] == 2 and 0.1 < lr["importance"] < 0.5 and lr["p"] > 0.05


def test_tied_trials_rank_as_the_sweep_ranked_them(tmp_path):
    """Ties on the metric (common on a small validation set) go to the lower validation loss, as
    in the sweep's own table and smith's report; analyze used to list them in file order."""
    from tunesmith.orchestrator import analyze
    w = LedgerCallback(Storage(str(tmp_path)), "tie", ["lr"], {"lr": []}, epochs=1, metric="val_acc",
                      mode="max", pruned={})
    (tmp_path / "tie").mkdir(exist_ok=True)
    (tmp_path / "tie" / "spec.yaml").write_text("metric: val_acc\nmode: max\n")
    for i, (acc, loss) in enumerate([(0.95, 0.30), (0.99, 0.08), (0.99, 0.05), (0.99, 0.07)]):
        w.start(f"t{i}", {"lr": 0.1 * (i + 1)})
        w.record(f"t{i}", {"training_iteration": 1, "val_acc": acc, "val_loss": loss})
        w.finish(f"t{i}")
    assert [r.trial_id for r in w.ranked()] == ["t2", "t3", "t1", "t0"]
    w.close()
    (s,) = [analyze.summary(sw, 4) for sw in analyze.load(str(tmp_path), None)]
    assert [b["trial_id"] for b in s["best"]] == ["t2", "t3", "t1", "t0"]


def test_seed_repeats_are_reported_as_a_seed_variance_study(tmp_path, capsys):
    w = LedgerCallback(Storage(str(tmp_path)), "seeds", ["seed"], {"seed": [0, 1, 2, 3]}, epochs=1,
                      metric="val_acc", mode="max", pruned={})
    (tmp_path / "seeds").mkdir(exist_ok=True)
    (tmp_path / "seeds" / "spec.yaml").write_text("metric: val_acc\nmode: max\n")
    for i, acc in enumerate([0.90, 0.92, 0.94, 0.96]):
        w.start(f"t{i}", {"seed": i})
        w.record(f"t{i}", {"training_iteration": 1, "val_acc": acc})
        w.finish(f"t{i}")
    w.close()
    assert main(["analyze", str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "seed variance" in out
    rows = out.split("seed variance")[1].splitlines()
    assert rows[1].split() == ["seeds", "mean", "std", "±95%", "min", "max"]
    # mean, sample spread, and the t interval's half width (t 3.182 on 3 df x sd / 2)
    assert rows[3].split() == ["4", "0.93", "0.02582", "0.04109", "0.9", "0.96"]


def _chromium():
    import shutil
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_html_report_renders_offline_in_headless_chromium(results, tmp_path, capsys):
    """The page is one file: no network reference, plots embedded. Headless Chromium, with the
    network closed to it, renders it to a screenshot and to a DOM that names the best trial."""
    import subprocess
    page = tmp_path / "report.html"
    assert main(["analyze", str(results), "--html", str(page), "--no-plots"]) == 0
    assert f"page: {page}" in capsys.readouterr().out
    html = page.read_text()
    assert "http://" not in html and "https://" not in html and "src=\"data:image/png;base64," in html
    assert "alpha_002" in html and "Sweeps side by side" in html
    browser = _chromium()
    assert browser, "chromium is not installed: `make test` installs Debian's chromium for this test"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--proxy-server=127.0.0.1:9",   # no network
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20000
    from PIL import Image
    import numpy as np
    im = np.asarray(Image.open(shot).convert("L").resize((60, 120)))
    assert len(np.unique(im)) > 5   # not a blank page
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert "Best trial <b>alpha_002</b>" in dom and "Best trial <b>beta_004</b>" in dom


def test_effects_carry_intervals_and_say_when_the_data_cannot_separate_values(tmp_path, capsys):
    """The optimizer decides the score; the width is noise: only the first is called separated."""
    import numpy as np
    from tunesmith.orchestrator import analyze
    rng = np.random.default_rng(0)
    w = LedgerCallback(Storage(str(tmp_path)), "fx", ["optimizer", "model.width"],
                       {"optimizer": ["sgd", "adam"], "model.width": [16, 32]}, epochs=1, metric="val_acc",
                       mode="max", pruned={})
    (tmp_path / "fx").mkdir(exist_ok=True)
    (tmp_path / "fx" / "spec.yaml").write_text("metric: val_acc\nmode: max\n")
    for i in range(24):
        opt, width = ("sgd", "adam")[i % 2], (16, 32)[(i // 2) % 2]
        acc = (0.9 if opt == "sgd" else 0.6) + rng.normal(0, 0.02)
        w.start(f"t{i}", {"optimizer": opt, "model.width": width})
        w.record(f"t{i}", {"training_iteration": 1, "val_acc": acc})
        w.finish(f"t{i}")
    w.close()
    (s,) = [analyze.summary(sw, 3) for sw in analyze.load(str(tmp_path), None)]
    by = {e["hparam"]: e for e in s["effects"]}
    assert by["optimizer"]["separated"] and by["optimizer"]["p"] < 0.01
    assert by["optimizer"]["low"] > 0.8 and by["optimizer"]["importance"] <= by["optimizer"]["high"]
    assert not by["model.width"]["separated"] and by["model.width"]["p"] > 0.05
    sgd = next(b for b in by["optimizer"]["bins"] if b["bin"] == "sgd")
    assert 0 < sgd["±95%"] < 0.03 and sgd["trials"] == 12
    assert main(["analyze", str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "val_acc by model.width: within the noise, the data cannot separate these" in out
    assert "val_acc by optimizer\n" in out and "separates values" in out


def test_a_confirmation_is_read_back_from_parquet_as_the_sweep_gave_it(tmp_path, capsys):
    from tunesmith.orchestrator import analyze, confirm
    from tunesmith.trainables.config import CONFIRM
    w = LedgerCallback(Storage(str(tmp_path)), "cf", ["lr"], {"lr": []}, epochs=2, metric="val_acc", mode="max",
                       pruned={}, seed=0)
    (tmp_path / "cf").mkdir(exist_ok=True)
    (tmp_path / "cf" / "spec.yaml").write_text("metric: val_acc\nmode: max\n")
    for tid, lr, acc in (("a", 0.1, 0.95), ("b", 0.2, 0.94), ("c", 0.3, 0.5)):
        w.start(tid, {"lr": lr})
        for e in (1, 2):
            w.record(tid, {"training_iteration": e, "val_acc": acc, "val_loss": 1 - acc})
        w.finish(tid)
    for of, lr, accs in (("a", 0.1, (0.90, 0.91, 0.92)), ("b", 0.2, (0.95, 0.955, 0.97))):
        for seed, acc in zip((1000, 1001, 1002), accs):
            tid = f"{of}{seed}"
            w.start(tid, {CONFIRM: {"lr": lr, "seed": seed, "of": of}})
            for e in (1, 2):
                w.record(tid, {"training_iteration": e, "val_acc": acc, "val_loss": 1 - acc,
                               **({"test_acc": acc - 0.01, "test_loss": 0.3} if e == 2 else {})})
            w.finish(tid)
    live = confirm.judge(w.ledger, confirm.finalists(w.ledger, 2), [1000, 1001, 1002]).to_dict()
    w.close()
    (s,) = [analyze.summary(sw, 3) for sw in analyze.load(str(tmp_path), None)]
    assert s["trials"] == 3 and [b["trial_id"] for b in s["best"]] == ["a", "b", "c"]   # the search's own
    c = s["confirmation"]
    assert c == live and [f["trial"] for f in c["finalists"]] == ["b", "a"]
    assert c["finalists"][0]["test"] == pytest.approx((0.94 + 0.945 + 0.96) / 3)
    # the search's own runs (seed 0, whole) count: b read 0.94 there against a's 0.95
    assert c["finalists"][0]["by_seed"] == {"0": 0.94, "1000": 0.95, "1001": 0.955, "1002": 0.97}
    assert c["search_seeds"] == [0] and c["paired_seeds"] == 4 and not c["separated"]
    page = tmp_path / "page.html"
    assert main(["analyze", str(tmp_path), "--no-plots", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "confirmation: the finalists over seeds 0 (the search's own runs) and 1000, 1001, 1002 (new)" in out
    assert "ranked by the mean val_acc over the seeds they share, the search's own runs among them; test read once" in out
    assert "verdict: cannot tell b and a apart at this budget" in out
    html = page.read_text()
    assert "ranked by the mean val_acc over the seeds they share, the search&#39;s own runs among them" in html
    assert "the finalists over seeds 0 (the search&#39;s own runs) and 1000, 1001, 1002 (new)" in html
    assert "<th>new seeds</th>" in html and "0.9583" in html   # b's new seeds' mean
    # a spec.yaml without confirm.rank_by is a sweep from before it, which ranked by its metric (above);
    # one written since says what ranked its finalists, and the read-back ranks them the same way
    (tmp_path / "cf" / "spec.yaml").write_text("metric: val_acc\nmode: max\nconfirm: {rank_by: val_loss}\n")
    (s,) = [analyze.summary(sw, 3) for sw in analyze.load(str(tmp_path), None)]
    c = s["confirmation"]
    assert c["ranked_by"] == "val_loss" and c["basis"].startswith("ranked by the mean val_loss over")
    assert [f["trial"] for f in c["finalists"]] == ["b", "a"] and c["difference"] == pytest.approx(
        (0.94 + 0.95 + 0.955 + 0.97 - 0.95 - 0.90 - 0.91 - 0.92) / 4)   # a's loss minus b's, 1 - acc each
    assert main(["analyze", str(tmp_path), "--no-plots", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "mean val_loss" in out and "cannot tell b and a apart at this budget" in out and " val_loss (95% interval" in out
    html = page.read_text()
    assert "<th>mean val_loss</th>" in html and "ranked by the mean val_loss over the seeds they share" in html


def test_a_confirmation_ranked_by_the_late_epochs_is_read_back_from_the_epoch_rows(tmp_path):
    """confirm.rank_by late_val_loss: `analyze` reads each run's late epochs from epochs/, and ranks
    as the sweep did, where the final epoch's loss would rank the other way."""
    from tunesmith.orchestrator import analyze, confirm
    from tunesmith.trainables.config import CONFIRM
    w = LedgerCallback(Storage(str(tmp_path)), "lt", ["lr"], {"lr": []}, epochs=4, metric="val_acc", mode="max",
                       pruned={}, seed=0)
    (tmp_path / "lt").mkdir(exist_ok=True)
    curves = {"a": [0.9, 0.6, 0.40, 0.30], "b": [0.9, 0.5, 0.32, 0.31]}   # final: a lower; late: b lower
    for of, lr in (("a", 0.1), ("b", 0.2)):
        for seed in (0, 1000, 1001):   # the search's own whole run (seed 0), then two new seeds
            tid = of if seed == 0 else f"{of}{seed}"
            w.start(tid, {"lr": lr} if seed == 0 else {CONFIRM: {"lr": lr, "seed": seed, "of": of}})
            for e, loss in enumerate(curves[of], 1):
                w.record(tid, {"training_iteration": e, "val_acc": 0.9, "val_loss": loss + seed / 1e5,
                               **({"test_acc": 0.9, "test_loss": 0.3} if e == 4 and seed else {})})
            w.finish(tid)
    finals = confirm.finalists(w.ledger, 2)
    live = {by: confirm.judge(w.ledger, finals, [1000, 1001], by).to_dict() for by in ("late_val_loss", "val_loss")}
    w.close()
    for by, order in (("late_val_loss", ["b", "a"]), ("val_loss", ["a", "b"])):
        (tmp_path / "lt" / "spec.yaml").write_text(f"metric: val_acc\nmode: max\nconfirm: {{rank_by: {by}}}\n")
        (sw,) = analyze.load(str(tmp_path), None)
        c = analyze.summary(sw, 3)["confirmation"]
        assert c == live[by] and [f["trial"] for f in c["finalists"]] == order and c["ranked_by"] == by
        assert c["paired_seeds"] == 3 and c["search_seeds"] == [0]


def test_confirm_of_a_folder_that_is_no_sweep_is_bad_input(tmp_path, capsys):
    assert main(["analyze", str(tmp_path), "--confirm", "2"]) == 2
    err = capsys.readouterr().err
    assert "--confirm" in err and "not one sweep's folder" in err and "\n" not in err.strip()
    assert main(["analyze", str(tmp_path), "--confirm", "0"]) == 2
    capsys.readouterr()
    for bad in ("0", "101", "two", "1.5"):   # --seeds: auto (the default, as confirm.seeds) or 1 to 100
        assert main(["analyze", str(tmp_path), "--confirm", "2", "--seeds", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"tunesmith: error: --seeds = '{bad}': must be auto or a whole number from 1 to 100", err
    assert main(["analyze", str(tmp_path), "--confirm", "2", "--seeds", "auto"]) == 2   # good, on no sweep
    assert "not one sweep's folder" in capsys.readouterr().err
