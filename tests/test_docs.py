"""The documentation says what the code does: every flag of `--help` is in docs/sweep.md with the default the
code uses, under the default preset and under `--preset full`; the presets' cell counts are the code's; the
README's code example runs offline; the licence and citation files agree with pyproject.toml."""

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from ssmlora.sweep.cli import build_parser, config_from_args, given_flags, parse_args
from ssmlora.sweep.presets import DEFAULT_PRESET, PRESETS

ROOT = Path(__file__).resolve().parents[1]
SWEEP_MD = (ROOT / "docs" / "sweep.md").read_text()
ROW = re.compile(r"^\| `(--[a-z0-9-]+)` \| ([^|]*) \|", re.M)


def _documented() -> dict[str, str]:
    """flag -> the default column of its row in docs/sweep.md's flag tables."""
    return {flag: default.strip() for flag, default in ROW.findall(SWEEP_MD)}


def _long_flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings
            if s.startswith("--") and s != "--help" and not s.startswith("--no-")}


def _said(text: str):
    """A default as the docs write it: `on`/`off`, a number, a comma-separated list, a word; none/empty -> ()."""
    text = text.replace("`", "").strip()
    if text in ("on", "off"):
        return text == "on"
    if text in ("none", "empty", ""):
        return ()
    parts = tuple(_one(p.strip()) for p in text.split(","))
    return parts[0] if len(parts) == 1 else parts


def _one(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _code(value):
    """A default as the code holds it, in the same form as `_said`."""
    if isinstance(value, bool):
        return value
    if value is None or value == "" or (isinstance(value, (list, tuple, dict)) and not value):
        return ()
    if isinstance(value, (list, tuple)):
        parts = tuple(_one(str(v)) for v in value)
        return parts[0] if len(parts) == 1 else parts
    return _one(str(value))


def test_every_flag_of_help_has_a_row_in_docs_sweep_md():
    missing = sorted(set(_long_flags(build_parser())) - set(_documented()))
    assert not missing, f"flags of --help missing from docs/sweep.md's tables: {missing}"
    unknown = sorted(set(_documented()) - set(_long_flags(build_parser())))
    assert not unknown, f"docs/sweep.md documents flags the command does not have: {unknown}"


def test_every_default_docs_sweep_md_states_is_the_codes():
    """The first value of a row's default column is the default preset's; "(full: X)" is the tree's own default,
    written exactly where a preset changes the flag. A default the code leaves unset (None, empty) is described in
    words (the task's, all layers) and only needs a description."""
    plain = vars(parse_args([]))
    tree = {a.dest: a.default for a in build_parser()._actions}
    set_by_preset = {name for p in PRESETS.values() for name, value in p.settings.items() if value != tree[name]}
    checked = 0
    for flag, column in _documented().items():
        dest = _long_flags(build_parser())[flag].dest
        said, _, full = column.partition(" (full: ")
        assert column, f"{flag}: no default in docs/sweep.md"
        if dest in set_by_preset:
            assert full, f"{flag}: set by a preset, so its row must give --preset full's value as (full: ...)"
            if _code(tree[dest]) != ():
                assert _said(full.rstrip(")").split(";")[0]) == _code(tree[dest]), f"{flag}: full default"
        else:
            assert not full, f"{flag}: no preset sets it, yet its row gives a (full: ...) value"
        if isinstance(plain[dest], dict) or _code(plain[dest]) == ():
            continue  # described in words
        stated = said.split(" (")[0]
        assert _said(stated) == _code(plain[dest]), f"{flag}: docs say {stated!r}, the code uses {plain[dest]!r}"
        checked += 1
    assert checked >= 40  # the check reads the tables, not a handful of rows


def test_help_gives_the_default_a_plain_run_uses_and_the_full_presets():
    text = build_parser().format_help().replace("\n", " ")
    text = re.sub(r"\s+", " ", text)
    assert "(default: 20 under --preset cpu, 15 under --preset full)" in text
    assert "(default: 600 under --preset cpu, the task's under --preset full)" in text
    assert "(default: 15)" not in text and "(default: 8192)" not in text  # no tree default stated as a plain run's


def test_the_presets_cell_counts_in_the_docs_are_the_codes():
    cpu = len(config_from_args(parse_args([])).cells())
    full = len(config_from_args(parse_args(["--preset", "full"])).cells())
    assert (cpu, full) == (20, 60)
    assert DEFAULT_PRESET == "cpu"
    assert f"| `cpu` (default) | {cpu} |" in SWEEP_MD and f"| `full` | {full} |" in SWEEP_MD
    assert f"({cpu} cells). `--preset full` trains every entry at every length instead ({full} cells)" in SWEEP_MD


def test_a_presets_cost_methods_follow_the_methods_given():
    args = parse_args(["--methods", "lora,ssmlora:depth,ssmlora:scan", "--lengths", "512"])
    assert args.cost_methods == ["lora", "ssmlora:depth", "ssmlora:scan"]  # the preset's lora,ssmlora, variants kept
    assert config_from_args(args).design.cost_methods == ["lora", "ssmlora:depth", "ssmlora:scan"]
    assert parse_args(["--methods", "lora-at-ssmlora-lr,ssmlora"]).cost_methods == ["ssmlora"]  # controls are not lora
    given = parse_args(["--methods", "lora,ssmlora:scan", "--cost-methods", "lora"])
    assert given.cost_methods == ["lora"]  # a flag given always wins
    assert parse_args(["--methods", "lora", "--preset", "full"]).cost_methods == []  # full sets no cost cells


def test_given_flags_are_the_ones_written():
    parser = build_parser()
    assert given_flags(parser, ["--max-steps", "3", "--no-train-head", "--seeds=0"]) == {"max_steps", "train_head",
                                                                                           "seeds"}
    assert given_flags(parser, []) == set()


def test_the_readme_code_example_runs_offline(tmp_path):
    readme = (ROOT / "README.md").read_text()
    example = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "inject_adapters" in b)
    assert "from_pretrained(\"" not in example  # no hub id: the offline backbone's folder
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()


def test_licence_and_citation_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    licence = (ROOT / "LICENSE").read_text()
    assert project["license"]["text"] == "Apache-2.0" and "Apache License" in licence and "Version 2.0" in licence
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "Apache-2.0"
    assert cff["version"] == project["version"] and cff["title"].startswith("ssmlora")
    paper = next(r for r in cff["references"] if r["type"] == "conference-paper")
    assert "2502.04958" in paper["url"] and paper["authors"]
    readme = (ROOT / "README.md").read_text()
    assert "@inproceedings{" in readme and "2502.04958" in readme and "CITATION.cff" in readme


@pytest.mark.parametrize("doc", ["README.md", "docs/sweep.md", "docs/testing.md"])
def test_no_doc_states_an_old_default(doc):
    text = (ROOT / doc).read_text()
    for stale in ("seed (default 0)", "default LoRA and SSMLoRA", "recorded as `auto`", "resample seeds, then",
                  "182 tests", "roberta-base"):
        assert stale not in text, f"{doc}: {stale!r}"
