"""benchmarks/step_floor.py compares like with like: its bare PyTorch step does exactly the cell's optimizer
step (same update from the same start and batches), and the benchmark runs end to end on a tiny backbone."""

import os
import sys

import lightning as L
import pytest
import torch

from ssmlora.lab.cell import build_cell
from ssmlora.lab.data import TaskDataModule
from ssmlora.lab.module import AdapterClassifier
from ssmlora.sweep.config import SweepConfig
from tiny_models import tiny_sweep_env

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import step_floor  # noqa: E402

SIZES = dict(n_train=16, n_validation=4, n_test=4)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_sweep_env(tmp_path_factory.mktemp("step_floor"), [64], **SIZES)


def _trainable(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["lora", "ssmlora"])
def test_the_bare_step_makes_the_cells_update(env, tmp_path, method):
    # 4 sequences per step, 2 per forward: accumulation is part of what must match.
    sweep = SweepConfig.from_flat(model=str(env["bert"]), cache_dir=str(env["cache"]), tokens_per_step=256,
                                  batch_size=2, max_steps=5)
    cfg = sweep.cell(method, 64, 0)
    assert cfg.batch_plan() == (4, 2, 2)
    data, labels, pad_id, model, _ = build_cell(cfg)
    module = AdapterClassifier(model, len(labels), cfg.optim, lr=cfg.lr, max_steps=cfg.optim.max_steps)
    dm = TaskDataModule(data, 2, cfg.seed, pad_id)
    dm.setup("fit")
    start = _trainable(module)

    L.seed_everything(0, verbose=False)
    times, flops = step_floor.cell_steps(cfg, module, dm, 1, tmp_path)  # 2 optimizer steps, the 2nd timed
    assert len(times) == 1 and flops > 0
    after_cell = _trainable(module)

    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.requires_grad:
                p.copy_(start[name])
    L.seed_everything(0, verbose=False)
    assert len(step_floor.bare_steps(cfg, module, step_floor.endless(dm), 1)) == 1
    after_bare = _trainable(module)

    moved = set()
    for name in start:
        torch.testing.assert_close(after_bare[name], after_cell[name], rtol=1e-5, atol=1e-7)
        if not torch.equal(after_cell[name], start[name]):
            moved.add(name)
    # Not vacuous: the head and most adapter tensors took the update (an SSM weight whose gradient is still zero
    # after two steps from its zero-initialised partner does not have to).
    assert any(".classifier." in name for name in moved) and len(moved) >= len(start) // 2, sorted(set(start) - moved)


def test_the_benchmark_prints_a_ratio_per_method_and_length(env, capsys):
    rc = step_floor.main(["--model", str(env["bert"]), "--cache-dir", str(env["cache"]), "--lengths", "64",
                          "--steps", "1", "--rounds", "2", "--tokens-per-step", "256"])
    out = capsys.readouterr().out
    assert rc == 0
    table = out[out.rindex("| method |"):]  # rows print as they come, then the whole table
    rows = [line.split("|") for line in table.splitlines() if line.startswith(("| lora |", "| ssmlora |"))]
    assert len(rows) == 2
    for row in rows:
        cell, bare, ratio = (float(row[i]) for i in (4, 5, 6))
        assert cell > 0 and bare > 0 and ratio == pytest.approx(cell / bare, rel=2e-2)
    assert "Largest cell / bare" in out


def test_the_profile_splits_a_steps_operator_time_into_groups_that_add_up(env, capsys):
    import step_profile

    assert step_profile.group_of("aten::addmm") == "matrix products"
    assert step_profile.group_of("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention"
    assert step_profile.group_of("aten::addcmul_") == "optimizer and clipping"
    assert step_profile.group_of("aten::gelu_backward") == "elementwise"
    rc = step_profile.main(["--model", str(env["bert"]), "--cache-dir", str(env["cache"]), "--lengths", "64",
                            "--methods", "lora", "--steps", "2", "--tokens-per-step", "256"])
    out = capsys.readouterr().out
    assert rc == 0 and "### lora at L = 64" in out
    groups = out.split("| group | share of operator CPU time |")[1].split("| operator |")[0]
    shares = {line.split("|")[1].strip(): float(line.split("|")[2].strip(" %")) for line in groups.splitlines()
              if line.startswith("| ") and "%" in line}
    assert shares["matrix products"] > 0 and sum(shares.values()) == pytest.approx(100, abs=0.5)
