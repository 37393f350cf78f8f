"""A sweep from a file: `--config` reads YAML or JSON by the flags' names, flags given beside it win, unknown keys
and bad values are one line, and every sweep folder's config.yaml runs the same sweep again."""

import json

import pytest
import yaml
from tiny_models import tiny_sweep_env

from ssmlora.sweep.cli import config_from_args, main, parse_args
from ssmlora.sweep.config_file import config_yaml


def _cfg(argv):
    return config_from_args(parse_args(argv))


def _write(path, values):
    path.write_text(json.dumps(values) if path.suffix == ".json" else yaml.safe_dump(values))
    return str(path)


def test_a_file_sets_what_flags_set_and_flags_given_beside_it_win(tmp_path):
    values = {"max_steps": 40, "methods": ["lora", "ssmlora:scan"], "lr": {"lora": 1e-3}, "train-head": False,
              "tune_grid": {"lora": [1e-4, 1e-3]}, "targets": ["q", "v"], "lengths": [512, 1024]}
    for suffix in (".yaml", ".json"):
        path = _write(tmp_path / f"s{suffix}", values)
        from_file = _cfg(["--config", path])
        by_flags = _cfg(["--max-steps", "40", "--methods", "lora,ssmlora:scan", "--lr", "lora=1e-3", "--no-train-head",
                         "--tune-grid", "lora=1e-4,1e-3", "--targets", "q,v", "--lengths", "512,1024"])
        assert from_file == by_flags and from_file.identity_hash() == by_flags.identity_hash()
    path = _write(tmp_path / "s.yaml", values)
    assert _cfg(["--config", path, "--max-steps", "3"]).optim.max_steps == 3
    assert _cfg(["--config", path, "--max-len", "1024"]).lengths == [512, 1024]  # the flags' lengths win
    assert _cfg(["--config", path, "--lengths", "2048"]).lengths == [2048]


def test_the_preset_comes_from_the_flag_then_the_file_then_the_default(tmp_path):
    full = _write(tmp_path / "full.yaml", {"preset": "full"})
    assert parse_args(["--config", full]).preset == "full" and _cfg(["--config", full]).optim.max_steps == 15
    assert parse_args(["--config", full, "--preset", "cpu"]).preset == "cpu"
    steps = _write(tmp_path / "steps.yaml", {"max_steps": 7})
    args = parse_args(["--config", steps])
    assert args.preset == "cpu" and args.max_steps == 7 and args.tokens_per_step == 4096  # the file over the preset


@pytest.mark.parametrize("values, said", [
    ({"max_step": 40}, "unknown setting 'max_step' (did you mean 'max_steps'?)"),
    ({"wombat": 1}, "unknown setting 'wombat'; the settings are the flags' names"),
    ({"max_steps": "forty"}, "max_steps: invalid literal for int()"),
    ({"train_head": "yes"}, "train_head: give true or false, not 'yes'"),
    ({"preset": "gpu"}, "preset: 'gpu' is not one of cpu, full"),
    (["max_steps"], "expected a mapping of settings"),
])
def test_a_bad_file_is_one_line_naming_the_key(tmp_path, capsys, values, said):
    path = _write(tmp_path / "bad.yaml", values)
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--config", path])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and said in err and err.startswith("error: --config")


def test_a_value_the_configuration_refuses_is_refused_as_its_flag_is(tmp_path, capsys):
    path = _write(tmp_path / "p.yaml", {"precision": "fp8"})
    assert main(["--config", path, "--dry-run", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: --precision fp8: choose one of 32, bf16-mixed, 16-mixed\n"


def test_an_unreadable_file_is_one_line(tmp_path, capsys):
    for path, said in ((tmp_path / "missing.yaml", "cannot read it"), (tmp_path / "broken.json", "not valid JSON")):
        if path.suffix == ".json":
            path.write_text("{max_steps: 40")
        with pytest.raises(SystemExit):
            parse_args(["--config", str(path)])
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    [],
    ["--preset", "full"],
    ["--methods", "lora,ssmlora:depth,ssmlora:scan", "--lr", "lora=1e-3,ssmlora:scan=1e-4", "--tune", "lr",
     "--tune-grid", "lora=1e-4,1e-3", "ssmlora=1e-5,1e-4", "--targets", "q,v,ffn-out", "--layers", "0,2",
     "--eval-lengths", "2x", "--n-train", "64", "--no-train-head", "--scale", "alpha", "--val-every", "5"],
])
def test_config_yaml_reads_back_to_the_same_identity(tmp_path, argv):
    cfg = _cfg(argv)
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(cfg))
    again = _cfg(["--config", str(path)])
    assert again == cfg and again.identity_hash() == cfg.identity_hash()
    assert _cfg(["--config", str(path), "--preset", "cpu" if "full" in argv else "full"]) == cfg  # all written out


def test_every_sweep_folder_holds_a_config_yaml_that_runs_it_again(tmp_path, capsys):
    env = tiny_sweep_env(tmp_path, [64], n_train=16, n_validation=4, n_test=8)
    argv = ["--model", str(env["bert"]), "--cache-dir", str(env["cache"]), "--n-train", "16", "--n-validation", "4",
            "--n-test", "8", "--max-steps", "2", "--tokens-per-step", "256", "--lengths", "64", "--seeds", "0",
            "--methods", "lora", "--cost-methods", "", "--eval-lengths", "", "--in-process", "--out", str(tmp_path)]
    assert main(argv) == 0
    folder = next(p for p in tmp_path.iterdir() if (p / "config.yaml").exists())
    assert (folder / "config.yaml").read_text().startswith("# The settings of this sweep.")
    capsys.readouterr()
    # Given back, with flags beside it: one more entry, and no adapters kept (not part of the identity).
    again = ["--config", str(folder / "config.yaml"), "--methods", "lora,frozen", "--save-adapters", "none",
             "--cache-dir", str(env["cache"]), "--in-process", "--out", str(tmp_path)]
    assert main(again) == 0
    out = capsys.readouterr().out
    assert "[1/2] lora L=64 seed 0: skipped, done before (ok)" in out and "[2/2] frozen L=64 seed 0: ok" in out
    assert [p.name for p in tmp_path.iterdir() if (p / "config.yaml").exists()] == [folder.name]  # the same folder
    assert (folder / "cells" / "lora-L64-s0" / "adapter").exists()
    assert not (folder / "cells" / "frozen-L64-s0" / "adapter").exists()
    assert (folder / "cells" / "frozen-L64-s0" / "predictions.csv").exists()


def test_the_docs_example_file_is_its_flags(tmp_path):
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "sweep.md").read_text()
    path = tmp_path / "example.yaml"
    path.write_text(re.search(r"```yaml\n(.*?)```", doc, re.DOTALL).group(1))
    assert _cfg(["--config", str(path)]) == _cfg([
        "--methods", "lora,ssmlora:depth,ssmlora:scan", "--lengths", "512", "--eval-lengths", "2x,4x",
        "--max-steps", "40", "--lr", "lora=5e-4,ssmlora:scan=1e-4", "--tune-grid", "lora=1e-4,1e-3", "--no-train-head"])
