"""Method variants: a --methods entry is parsed once, into a frozen object that carries the method, its settings,
its rate and its label to every reader (cells, tuning, validation, rows)."""

from __future__ import annotations

import dataclasses

import pytest

from ssmlora.lab import variants
from ssmlora.lab.variants import MethodVariant, VariantError
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
    assert {t.variant.tune_grid for t in trials} == {(1e-4, 1e-3)}


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
