"""Accuracy a reader can trust: validation-only tuning, per-document predictions on fixed test documents, honest
seeds, the probe as a reference, and paired tests that find a planted difference and none between twins."""

import contextlib
import csv
import json
from dataclasses import replace

import lightning as L
import pytest
import torch

from plots.data import PROBE_SERIES, load_predictions, load_sweep, paired_at
from plots.differences import difference_vs_length
from plots.figures import accuracy_vs_length
from ssmlora import Method, register_method
from ssmlora.config import AdapterConfig
from ssmlora.lab.backbone import ModelConfig
from ssmlora.lab.cell import CellConfig, build_cell, run_cell
from ssmlora.lab.data import DataConfig, SealedSplit, SealedSplitError, TaskDataModule
from ssmlora.lab.module import OptimConfig
from ssmlora.lora import AdapterLinear, LoRALinear
from ssmlora.methods import get_method, unregister_method
from ssmlora.sweep.cli import main
from ssmlora.sweep.config import SweepConfig
from ssmlora.sweep.tune import TuningError, apply_choice, nearest_tuned, select, select_overall
from tiny_models import tiny_sweep_env

SIZES = {"n_train": 32, "n_validation": 16, "n_test": 16}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_sweep_env(tmp_path_factory.mktemp("tiny"), [64], **SIZES)


@pytest.fixture(scope="module")
def env2(tmp_path_factory):
    return tiny_sweep_env(tmp_path_factory.mktemp("tiny2"), [64, 128], **SIZES)


def _args(env, out, name, *extra):
    return ["--preset", "full", "--methods", "lora,ssmlora", "--seeds", "0", "--model", str(env["bert"]),
            "--cache-dir", str(env["cache"]),
            "--n-train", "32", "--n-validation", "16",
            "--n-test", "16", "--max-steps", "2", "--tokens-per-step", "256", "--lengths", "64", "--in-process",
            "--out", str(out), "--name", name, "--probe-examples", "32", *extra]


def _cell(env, seed=0, **kw):
    return CellConfig(adapter=AdapterConfig(method="lora"), max_len=64, seed=seed, lr=1e-3,
                      model=ModelConfig(model=str(env["bert"])),
                      data=DataConfig(task="topic-mix", cache_dir=str(env["cache"]), **SIZES),
                      optim=OptimConfig(max_steps=2, tokens_per_step=256, probe_examples=32), **kw)


# ---------------------------------------------------------------- the seal on the test split

def test_a_sealed_split_refuses_every_read_and_the_test_loader_with_it():
    sealed = SealedSplit("learning-rate tuning")
    for read in (lambda: len(sealed), lambda: sealed[0], lambda: sealed["label"], lambda: list(sealed),
                 lambda: sealed.select([0]), lambda: sealed.select_columns(["label"])):
        with pytest.raises(SealedSplitError, match="the test split was read during learning-rate tuning; selection "
                                                   "may use validation only"):
            read()
    dm = TaskDataModule({"test": sealed}, micro_batch=2)
    with pytest.raises(SealedSplitError):
        dm.test_dataloader()


def test_a_tuning_cell_that_would_score_the_test_split_fails(env, tmp_path, monkeypatch):
    """The guard is live inside a tuning cell: swap its validation for a test run and the cell raises."""
    test = L.Trainer.test
    monkeypatch.setattr(L.Trainer, "validate", lambda self, *a, **k: test(self, *a, **k))
    with pytest.raises(SealedSplitError):
        run_cell(_cell(env, tuning=True), tmp_path / "cell")


@pytest.mark.slow
def test_tune_lr_selects_on_validation_records_the_choice_and_resumes(env, tmp_path, capsys):
    args = _args(env, tmp_path, "t", "--methods", "lora,ssmlora", "--tune", "lr", "--tune-grid", "lora=1e-4,1e-2",
                 "ssmlora=1e-5,1e-3")
    assert main(args) == 0  # a trial that read the test split would have failed on the seal, and so the sweep
    folder = tmp_path / "t"
    tuning = json.loads((folder / "tune" / "tuning.json").read_text())
    assert tuning["lengths"] == [64] and tuning["seed"] == 0
    for method, trials in tuning["trials"].items():
        assert [(t["length"], t["lr"]) for t in trials] == [(64, v) for v in (
            [1e-4, 1e-2] if method == "lora" else [1e-5, 1e-3])]
        assert all(t["status"] == "ok" and t["n_validation"] == 16 for t in trials)
        best = max(trials, key=lambda t: (t["val_acc"], -t["val_loss"], -t["lr"]))
        assert tuning["chosen"][method] == {"64": best["lr"]} and tuning["overall"][method] == best["lr"]
    config = json.loads((folder / "config.json").read_text())
    assert config["tuning"]["chosen"] == tuning["chosen"] and config["resolved"]["lr"] == tuning["chosen"]
    rows = list(csv.DictReader(open(folder / "results.csv")))
    assert {(r["method"], float(r["lr"]), r["selected_on"]) for r in rows} == {
        (m, v["64"], "val@L64") for m, v in tuning["chosen"].items()}
    report = (folder / "report.md").read_text()
    assert "selected on the validation split only (seed 0; the test split was sealed)" in report
    assert f"lora {tuning['chosen']['lora']['64']:g} at L=64" in report
    stamps = {p: p.stat().st_mtime_ns for p in (folder / "tune").glob("*/result.json")}
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("done before, val_acc") == 4 and "[tune 1/4] lora lr=0.0001 L=64 ...\n" not in out
    assert stamps == {p: p.stat().st_mtime_ns for p in (folder / "tune").glob("*/result.json")}


def _trial(length, lr, acc, loss, status="ok"):
    return {"length": length, "lr": lr, "val_acc": acc, "val_loss": loss, "status": status}


def test_the_overall_choice_is_the_best_mean_over_lengths_and_cells_take_the_nearest_tuned_length(env):
    # 1e-4 wins at 512 by one document, 1e-5 wins at 2048 by ten: the mean picks 1e-5, per length each keeps its own.
    trials = [_trial(512, 1e-5, 0.35, 1.50), _trial(512, 1e-4, 0.36, 1.52),
              _trial(2048, 1e-5, 0.52, 1.34), _trial(2048, 1e-4, 0.42, 1.60)]
    assert [select("m", [t for t in trials if t["length"] == n]) for n in (512, 2048)] == [1e-4, 1e-5]
    assert select_overall("m", trials) == 1e-5
    # equal mean accuracy: the lower mean loss, then the smaller value
    tied = [_trial(512, 1e-5, 0.4, 1.2), _trial(512, 1e-4, 0.5, 1.0), _trial(1024, 1e-5, 0.6, 1.2),
            _trial(1024, 1e-4, 0.5, 1.0)]
    assert select_overall("m", tied) == 1e-4
    # a value that failed at one length cannot be everyone's default
    assert select_overall("m", [*trials[:3], _trial(2048, 1e-4, None, None, "failed")]) == 1e-5
    with pytest.raises(TuningError, match="no value of m finished ok at every tuned length"):
        select_overall("m", [_trial(512, 1e-5, 0.3, 1.0), _trial(2048, 1e-4, 0.3, 1.0)])
    record = {"lengths": [512, 2048], "chosen": {"lora": {"512": 1e-4, "2048": 1e-5}}}
    assert [nearest_tuned(record, n) for n in (512, 1024, 2048, 4096)] == [512, 512, 2048, 2048]
    cells = [replace(_cell(env), max_len=n) for n in (512, 4096)]  # a hand-built cell: its label is its method
    assert [(c.lr, c.selected_on) for c in apply_choice(SweepConfig(), cells, record)] == [(1e-4, "val@L512"),
                                                                                        (1e-5, "val@L2048")]


def test_tune_only_selects_per_length_and_never_trains_a_sweep_cell(env2, tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr(L.Trainer, "test", lambda *a, **k: opened.append(1))
    args = _args(env2, tmp_path, "t", "--methods", "lora", "--tune", "lr", "--tune-grid", "1e-4,1e-2",
                 "--tune-len", "64,128", "--tune-only")
    args[args.index("--lengths") + 1] = "64,128"
    assert main(args) == 0
    folder = tmp_path / "t"
    tuning = json.loads((folder / "tune" / "tuning.json").read_text())
    assert tuning["lengths"] == [64, 128] and set(tuning["chosen"]["lora"]) == {"64", "128"}
    assert [(t["length"], t["lr"], t["status"]) for t in tuning["trials"]["lora"]] == [
        (64, 1e-4, "ok"), (64, 1e-2, "ok"), (128, 1e-4, "ok"), (128, 1e-2, "ok")]
    assert tuning["overall"]["lora"] == select_overall("lora", tuning["trials"]["lora"])
    assert not opened and not (folder / "cells").exists() and not (folder / "results.csv").exists()


@pytest.mark.parametrize("extra, message", [
    (["--tune", "dropout"], "error: --tune dropout: unknown knob; the tunable knob is lr"),
    (["--tune-only"], "error: --tune-only without --tune: nothing to select; add --tune lr"),
    (["--tune", "lr", "--tune-len", "32"], "error: --tune-len 32: 32 is below the task library's minimum"),
    (["--tune", "lr", "--tune-len", "512,1024"], "error: --tune-len 512,1024: 1024 is longer than the sweep's "
                                                 "longest length 512; tune at lengths the sweep trains"),
    (["--tune", "lr", "--tune-len", "64,64"], "error: --tune-len 64,64: a length is given twice"),
    (["--tune", "lr", "--tune-grid", "lora="], "error: --tune-grid lora= is empty: give at least one value"),
    (["--tune", "lr", "--tune-grid", "lora=1e-3,1e-4"], "error: --tune-grid lora=0.001,0.0001: values must strictly "
                                                        "increase (sorted, no repeats)"),
    (["--tune", "lr", "--tune-grid", "lora=1e-4,1e-4"], "values must strictly increase"),
    (["--tune", "lr", "--lr", "lora=1e-3"], "with --tune lr: a tuned rate is selected on validation, not given"),
    (["--tune", "lr", "--task", "no-val"], "error: --tune lr: task no-val has no validation split, and selection "
                                           "may not read the test split; tune on a task with one"),
])
def test_bad_tuning_input_is_one_error_line_and_exit_2(extra, message, tmp_path, capsys, monkeypatch):
    from data_prep import registry

    spec = registry.get_task("topic-mix")
    monkeypatch.setitem(registry._REGISTRY, "no-val", type(spec)(**{**spec.__dict__, "name": "no-val",
                                                                      "default_sizes": (800, 0, 200)}))
    code = main(["--preset", "full", "--methods", "lora", "--lengths", "512", "--out", str(tmp_path), "--dry-run",
                 *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not any(tmp_path.iterdir())  # nothing built, nothing trained


# ---------------------------------------------------------------- seeds and the fixed test documents

def _adapter_init(env, seed):
    cfg = _cell(env, seed)
    L.seed_everything(seed, verbose=False)
    _, _, _, model, _ = build_cell(cfg)
    return torch.cat([m.lora_A.detach().flatten() for m in model.modules() if isinstance(m, LoRALinear)])


def _train_order(env, seed):
    data, _, pad, _, _ = build_cell(_cell(env, seed))
    loader = TaskDataModule(data, 2, seed, pad).train_dataloader()
    return [b["labels"].tolist() + [len(b["input_ids"][0])] for b in loader]


def test_seeds_vary_adapter_init_and_data_order_and_one_seed_repeats_exactly(env, tmp_path):
    assert torch.equal(_adapter_init(env, 0), _adapter_init(env, 0))
    assert not torch.equal(_adapter_init(env, 0), _adapter_init(env, 1))
    assert _train_order(env, 0) == _train_order(env, 0) and _train_order(env, 0) != _train_order(env, 1)
    runs = [run_cell(_cell(env, seed), tmp_path / f"c{i}") for i, seed in enumerate((0, 0, 1))]
    digests = [r["ranks"][0]["adapter_sha256"] for r in runs]
    assert digests[0] == digests[1] != digests[2]  # trained weights: identical for one seed, not across seeds
    docs = [[r["doc_id"] for r in csv.DictReader(open(tmp_path / f"c{i}" / "predictions.csv"))] for i in range(3)]
    assert docs[0] == docs[1] == docs[2] and len(docs[0]) == 16  # the same test documents for every seed
    assert runs[0]["probe_accuracy"] == runs[1]["probe_accuracy"]


# ---------------------------------------------------------------- the paired test on tiny sweeps

class BlindHead(AdapterLinear):
    """The planted defect: the head's output is a constant (its input ignored), so it always predicts class 0.
    Its one parameter only gives the step something to train (the adapted head projection itself is frozen)."""

    adapter_param_names = ("offset",)

    def __init__(self, base, r, scaling, dropout):
        super().__init__(base, r, scaling, dropout)
        self.offset = torch.nn.Parameter(torch.zeros(1, **self._param_kw))

    def delta(self, x):
        out = self.base(x)
        constant = torch.zeros_like(out)
        constant[..., 0] = 10.0
        return constant - out + 0.0 * self.offset


class Twin(LoRALinear):
    """LoRA under another name: the same numbers, so no difference may be reported."""


def _planted_words(cfg, tok):
    """Two classes a random tiny model still tells apart: documents of one repeated word, with a little noise."""
    sizes = cfg.sizes((40, 20, 40))
    rng = __import__("random").Random(cfg.seed)
    words = ("river", "stone", "cloud", "green", "paper", "music", "table", "light")
    return {split: [{"doc_id": f"planted/{split}/{i:05d}", "label": i % 2,
                     "text": " ".join(["apple", "house"][i % 2] if rng.random() < 0.7 else rng.choice(words)
                                      for _ in range(40))}
                    for i in range(n)] for split, n in sizes.items()}


@contextlib.contextmanager
def planted_sweep_setup(monkeypatch):
    """The `planted` task and two methods for the paired tests: `blind` (head fixed to class 0: a planted
    difference) and `twin` (LoRA under another name: no difference), unregistered afterwards."""
    from data_prep import registry

    spec = registry.get_task("topic-mix")
    monkeypatch.setitem(registry._REGISTRY, "planted", type(spec)(**{
        **spec.__dict__, "name": "planted", "labels": ("apple", "house"), "builder": _planted_words,
        "default_sizes": (40, 20, 40), "version": "planted-1"}))
    register_method(Method("blind", "head output fixed: always class 0", layer=BlindHead,
                           in_scheme=lambda role, layer, targets: role == "head", defaults={"lr": 1e-3}))
    register_method(Method("twin", "LoRA under another name", layer=Twin, in_scheme=get_method("lora").in_scheme,
                           defaults={"lr": 5e-4}))
    try:
        yield
    finally:
        unregister_method("blind")
        unregister_method("twin")


def test_the_paired_test_finds_a_planted_difference_and_none_between_twins(env, tmp_path, monkeypatch):
    with planted_sweep_setup(monkeypatch):
        code = main(["--preset", "full", "--model", str(env["bert"]), "--cache-dir", str(tmp_path / "data"),
                     "--task", "planted",
                     "--max-steps", "1", "--tokens-per-step", "256", "--lengths", "64", "--in-process",
                     "--out", str(tmp_path), "--name", "p", "--probe-examples", "40", "--min-eval", "100",
                     "--methods", "lora,twin,blind", "--seeds", "0"])
        assert code == 0
        sweep = load_sweep(tmp_path / "p")
        predictions = load_predictions(sweep)
        twins = paired_at(predictions, "twin", "lora", 64)
        assert (twins.diff, twins.low, twins.high, twins.p_value) == (0.0, 0.0, 0.0, 1.0) and twins.n_docs == 40
        planted = paired_at(predictions, "blind", "lora", 64)
        assert planted.detected and planted.high < 0 and planted.p_value < 0.01, planted
        report = (tmp_path / "p" / "report.md").read_text()
        assert "twin vs lora" not in report  # only ssmlora - lora and method - probe are reported
        assert "L=64: twin vs probe: no detectable difference" in report or "L=64: twin is" in report
        assert "L=64: blind is" in report and "lower in accuracy than probe" in report
        fig = difference_vs_length(sweep)  # the figure draws the same differences, around the zero line
        drawn = {a.get_gid(): a for a in fig.axes[0].get_children()}
        assert drawn["diff:blind-probe"].get_ydata()[0] == pytest.approx(
            paired_at(predictions, "blind", PROBE_SERIES, 64).diff)
        assert list(drawn["zero"].get_ydata()) == [0, 0]
        fig = accuracy_vs_length(sweep)  # the probe is its own line; n test documents under the length
        texts = [t.get_text() for t in fig.axes[0].texts if t.get_gid() == "n_test"]
        probe = sweep.ok.drop_duplicates("seed")["probe_accuracy"].mean()
        assert texts == ["n=40"] and [a for a in fig.axes[0].get_lines() if a.get_gid() == "mean:probe"][0] \
            .get_ydata()[0] == pytest.approx(probe)
