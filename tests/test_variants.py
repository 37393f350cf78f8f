"""Method variants: a --methods entry is parsed once, into a frozen object that carries the method, its settings,
its rate and its label to every reader (cells, tuning, validation, rows)."""

from __future__ import annotations

import dataclasses

import pytest

from ssmlora.sweep import variants
from ssmlora.sweep.variants import MethodVariant, VariantError
from ssmlora.sweep.config import SweepConfig


def test_an_entry_becomes_one_frozen_variant():
    cfg = SweepConfig.from_flat(methods=["lora", "ssmlora:scan", "frozen"], lengths=[512],
                                lr={"ssmlora:scan": 1e-4})
    lora, scan, frozen = cfg.variants
    assert lora == MethodVariant("lora", "lora", (), 5e-4, "registry", (5e-5, 5e-4))  # the default --tune-grid
    assert scan == MethodVariant("ssmlora:scan", "ssmlora", (("ssm_mode", "scan"),), 1e-4, "--lr ssmlora:scan",
                                 (5e-5, 5e-4))
    assert frozen.lr is None and not frozen.trains_adapters
    with pytest.raises(dataclasses.FrozenInstanceError):
        scan.lr = 1.0
    cell = cfg.cell(scan, 512, 3)
    assert (cell.method, cell.adapter.ssm_mode, cell.lr, cell.label, cell.tag()) == (
        "ssmlora", "scan", 1e-4, "ssmlora:scan", "ssmlora-scan-L512-s3")
    assert cfg.adapter.ssm_mode == "depth"  # the variant's setting is the cell's alone
    assert cfg.cell("ssmlora:scan", 512, 3) == cell  # by label: the grid's own object, not a new parse


def test_entries_are_parsed_once_whatever_reads_them(monkeypatch):
    """Cells, tuning trials, validation and row identities all read the parsed objects: after construction,
    no entry string is split again."""
    from ssmlora.sweep.tune import trial_cells
    from ssmlora.sweep.validate import check_settings

    cfg = SweepConfig.from_flat(methods=["lora", "ssmlora:depth", "ssmlora:scan"], lengths=[512, 1024],
                                seeds=[0, 1], tune="lr", tune_grid={"*": [1e-4, 1e-3]})
    calls = []
    original = variants.split_entry
    monkeypatch.setattr(variants, "split_entry", lambda entry: calls.append(entry) or original(entry))
    cells = cfg.cells()
    trials = trial_cells(cfg)
    check_settings(cfg)
    rows = [cfg.row_identity(v) for v in cfg.variants]
    assert calls == []
    assert len(cells) == 12 and len(trials) == 6
    assert [c.label for c in cells[:3]] == ["lora", "ssmlora:depth", "ssmlora:scan"]
    assert rows == [{"ssm_mode": ""}, {"ssm_mode": "depth"}, {"ssm_mode": "scan"}]
    assert {cfg.variant(t.label).tune_grid for t in trials} == {(1e-4, 1e-3)}


def test_rate_resolution_order():
    """An entry's own --lr key, else its method's, else "*", else the registry default; the source is kept."""
    cfg = SweepConfig.from_flat(methods=["lora", "ssmlora:depth", "ssmlora:scan"], lengths=[512],
                                lr={"*": 3e-4, "ssmlora": 2e-5, "ssmlora:scan": 1e-4})
    assert [(v.lr, v.lr_source) for v in cfg.variants] == [
        (3e-4, "--lr *"), (2e-5, "--lr ssmlora"), (1e-4, "--lr ssmlora:scan")]


@pytest.mark.parametrize("values, message", [
    ({"methods": ["bogus"]}, "--methods bogus: unknown method 'bogus': choose one of"),
    ({"methods": ["lora:scan"]}, "--methods lora:scan: method 'lora' has no variants: write it as 'lora'"),
    ({"methods": ["ssmlora:foo"]}, "--methods ssmlora:foo: ssm_mode 'foo' is not allowed"),
    ({"lr": {"bogus": 1e-4}}, "--lr bogus=...: unknown method 'bogus'"),
])
def test_a_bad_entry_fails_at_construction(values, message):
    with pytest.raises(VariantError, match="^" + message.replace("(", r"\(")):
        SweepConfig.from_flat(lengths=[512], **values)


def test_report_shows_the_configuration_once():
    """config.json's `identity` repeats `config` less the grid: the report lists the settings once."""
    from plots.report import config_items

    config = {"config": {"optim": {"max_steps": 15}}, "identity": {"optim": {"max_steps": 15}},
              "identity_hash": "abc"}
    keys = [k for k, _ in config_items(config)]
    assert keys == ["config.optim", "identity_hash"]


# ---- controls (step 2) ----

SIZES = {"n_train": 16, "n_validation": 4, "n_test": 8}
CONTROLS = "lora,ssmlora,lora-at-ssmlora-lr,ssmlora-at-lora-lr,lora-at-ssmlora-params"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from tiny_models import tiny_sweep_env

    return tiny_sweep_env(tmp_path_factory.mktemp("variants"), [64], **SIZES)


def _flags(env, out, *extra) -> list[str]:
    return ["--preset", "full", "--model", str(env["bert"]), "--task", "topic-mix", "--cache-dir", str(env["cache"]),
            "--n-train", "16", "--n-validation", "4", "--n-test", "8", "--max-steps", "1", "--tokens-per-step", "256",
            "--probe-examples", "16", "--lengths", "64", "--seeds", "0", "--out", str(out), "--name", "s", *extra]


@pytest.mark.slow
def test_each_control_reaches_its_cell_with_the_stated_rate_and_size(env, tmp_path):
    """A tiny sweep of the methods and every built-in control: each row carries its entry, the rate the control
    states, and the parameter-matched LoRA's adapter count is the counted one, within 10 % of SSMLoRA's."""
    import csv
    import json

    from ssmlora.sweep.cli import config_from_args, build_parser, main

    flags = _flags(env, tmp_path, "--methods", CONTROLS, "--lr", "lora=2e-3,ssmlora=3e-4", "--in-process")
    cfg = config_from_args(build_parser().parse_args(flags))
    by_label = {v.label: v for v in cfg.variants}
    assert {k: (v.lr, v.matched_to) for k, v in by_label.items()} == {
        "lora": (2e-3, ""), "ssmlora": (3e-4, ""), "lora-at-ssmlora-lr": (3e-4, "ssmlora"),
        "ssmlora-at-lora-lr": (2e-3, "lora"), "lora-at-ssmlora-params": (2e-3, "ssmlora")}
    matched = by_label["lora-at-ssmlora-params"]
    assert dict(matched.settings)["r"] != cfg.adapter.r  # matched by rank, on this model
    assert main(flags) == 0
    with (tmp_path / "s" / "results.csv").open(newline="") as fh:
        rows = {r["variant"]: r for r in csv.DictReader(fh)}
    assert {k: float(r["lr"]) for k, r in rows.items()} == {k: v.lr for k, v in by_label.items()}
    assert {k: r["method"] for k, r in rows.items()} == {k: v.method for k, v in by_label.items()}
    counted = {k: cfg.count_adapter_parameters(v.adapter(cfg.adapter)) for k, v in by_label.items()}
    assert {k: int(r["adapter_params"]) for k, r in rows.items()} == counted
    ratio = counted["lora-at-ssmlora-params"] / counted["ssmlora"]
    assert abs(ratio - 1) <= 0.1 and abs(ratio - 1) < abs(counted["lora"] / counted["ssmlora"] - 1)
    assert f"{counted['lora-at-ssmlora-params']:,} adapter parameters against ssmlora's {counted['ssmlora']:,}" \
        in matched.control
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["resolved"]["variants"]["lora-at-ssmlora-lr"]["matched_to"] == "ssmlora"
    report = (tmp_path / "s" / "report.md").read_text()
    assert "- `lora-at-ssmlora-params`: lora, r=" in report and "Control: LoRA at the rank" in report
    verdict = [line.split(" | ")[1] for line in report.split("## Summary")[0].splitlines() if line.startswith("| C")]
    assert verdict == ["ssmlora - lora", "ssmlora - lora-at-ssmlora-params", "ssmlora - lora",
                       "ssmlora - lora-at-ssmlora-lr", "ssmlora - lora", "ssmlora - lora-at-ssmlora-lr"]
    pairs = [line.split(": ")[1] for line in report.splitlines() if line.startswith("- L=64: ")]
    # each control against its counterpart, the LoRA side second; then every entry against the probe
    assert pairs[:4] == ["ssmlora vs lora", "ssmlora vs lora-at-ssmlora-lr", "ssmlora-at-lora-lr vs lora",
                         "ssmlora vs lora-at-ssmlora-params"] and len(pairs) == 4 + 5


def test_a_control_is_one_registry_entry(monkeypatch):
    """Registering a control is all it takes: it parses, takes its counterpart's rate, and is not tuned."""
    from ssmlora.sweep.tune import tuned_methods

    monkeypatch.setitem(variants._CONTROLS, "ssmlora-at-lora-lr-scan", variants.Control(
        "ssmlora-at-lora-lr-scan", "ssmlora", "SSMLoRA at LoRA's rate", rate_of="lora"))
    cfg = SweepConfig.from_flat(methods=["lora", "ssmlora-at-lora-lr-scan"], lengths=[512], tune="lr")
    control = cfg.variants[1]
    assert (control.method, control.lr, control.rate_of, control.tune_grid) == ("ssmlora", 5e-4, "lora", None)
    assert [v.label for v in tuned_methods(cfg)] == ["lora"]
    with pytest.raises(ValueError, match="exactly one of rate_of and params_of"):
        variants.register_control(variants.Control("x", "lora", "neither"))


def test_a_tuned_rate_is_followed_by_its_lr_matched_control():
    from ssmlora.sweep.tune import apply_choice

    cfg = SweepConfig.from_flat(methods=["lora", "ssmlora", "lora-at-ssmlora-lr"], lengths=[512], tune="lr")
    record = {"lengths": [512], "chosen": {"lora": {"512": 1e-3}, "ssmlora": {"512": 1e-4}}}
    cells = {c.label: c for c in apply_choice(cfg, cfg.cells(), record)}
    assert (cells["lora-at-ssmlora-lr"].lr, cells["lora-at-ssmlora-lr"].selected_on) == (1e-4, "ssmlora@val@L512")
    assert (cells["lora"].lr, cells["lora"].selected_on) == (1e-3, "val@L512")


def test_a_control_that_cannot_be_matched_is_refused(monkeypatch):
    """No rank of LoRA within 10 %: one line naming the control, the nearest rank and the fix."""
    cfg = SweepConfig.from_flat(methods=["lora"], lengths=[512])
    monkeypatch.setattr(SweepConfig, "count_adapter_parameters",
                        lambda self, adapter: 1000 * adapter.r if adapter.method == "lora" else 1450)
    with pytest.raises(VariantError, match=r"^--methods lora-at-ssmlora-params: no rank of lora comes within 10% of "
                                           r"ssmlora's 1,450 adapter parameters on this model \(nearest: r=1, 1,000\)"):
        SweepConfig.from_flat(methods=["lora-at-ssmlora-params"], lengths=[512])
    assert cfg.variants[0].label == "lora"
