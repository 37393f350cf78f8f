"""The project's structure: one-way imports, one default per setting, a registry that is the only place to add a
method, and a README whose links resolve and whose main command validates."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from torch import nn

from ssmlora import Method, count_parameters, inject_adapters, register_method
from ssmlora.config import AdapterConfig
from ssmlora.lora import AdapterLinear
from ssmlora.methods import unregister_method
from ssmlora.sweep.cli import build_parser, config_from_args
from ssmlora.sweep.config import SECTIONS, SweepConfig, flat_fields, section_type
from tiny_models import tiny_model, tiny_sweep_env

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"data_prep": 0, "results": 0, "ssmlora": 1, "ssmlora.lab": 2, "ssmlora.sweep": 3, "plots": 3}
PACKAGES = ("data_prep", "results", "ssmlora", "plots")


def _imports() -> dict[str, set[str]]:
    """{module: project modules it imports, at any depth of its code}, from the source's AST."""
    graph = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module)
                elif isinstance(node, ast.ImportFrom) and node.level:
                    found.add(name.rsplit(".", node.level)[0] + (f".{node.module}" if node.module else ""))
            graph[name] = {m for m in found if m.split(".")[0] in PACKAGES}
    return graph


def _layer(module: str) -> int:
    for prefix in ("ssmlora.lab", "ssmlora.sweep", "data_prep", "results", "plots", "ssmlora"):
        if module == prefix or module.startswith(prefix + "."):
            return LAYER[prefix]
    raise AssertionError(module)


def test_imports_point_down_only():
    graph = _imports()
    upward = [(a, b) for a, deps in graph.items() for b in deps
              if _layer(b) > _layer(a) and not (a == "ssmlora" and b.startswith("ssmlora."))]
    assert upward == []
    assert not any(b.startswith("ssmlora") for a, deps in graph.items() if a.startswith("data_prep") for b in deps)
    # the ground layers stand alone: neither imports the other, and results loads no torch
    assert not any(b.split(".")[0] in ("data_prep", "ssmlora") for a, deps in graph.items()
                   if a.startswith("results") for b in deps)
    library = [a for a in graph if _layer(a) == 1]
    assert not any(b.startswith(("ssmlora.lab", "ssmlora.sweep")) for a in library for b in graph[a])
    plots = {b.split(".")[0] for a, deps in graph.items() if a.startswith("plots") for b in deps}
    assert plots == {"plots", "results"}  # the plots read only the sweep folder's files
    out = subprocess.run([sys.executable, "-c", "import sys, ssmlora.inject, ssmlora.params; "
                          "print('lightning' in sys.modules)"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    out = subprocess.run([sys.executable, "-c", "import sys, results, results.claims; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_flag_default_is_the_config_trees_default():
    args = build_parser().parse_args([])
    assert config_from_args(args) == SweepConfig()
    for name, (section, f) in flat_fields().items():
        default = f.default_factory() if callable(f.default_factory) else f.default
        assert getattr(args, name) == default == getattr(getattr(SweepConfig(), section), name), name
    declared = [f.name for s in SECTIONS for f in fields(section_type(s))]
    assert len(declared) == len(set(declared))  # no setting declared twice


class BiasAdapter(AdapterLinear):
    """A trainable bias beside a frozen projection (BitFit-style, arXiv 2106.10199): y = W0 x + b, b = 0 at init."""
    adapter_param_names = ("adapter_bias",)

    def __init__(self, base, r, scaling, dropout):
        super().__init__(base, r, scaling, dropout)
        self.adapter_bias = nn.Parameter(torch.zeros(self.out_features, **self._param_kw))

    def delta(self, x):
        return self.adapter_bias.expand(*x.shape[:-1], -1)


def test_a_method_registered_from_a_test_file_runs_a_tiny_sweep(tmp_path):
    from ssmlora.sweep.cli import main

    register_method(Method("bias", "a trainable bias on q and v", layer=BiasAdapter,
                           in_scheme=lambda role, layer, targets: role in ("q", "v"), defaults={"lr": 1e-2}))
    try:
        model = inject_adapters(tiny_model("bert"), AdapterConfig(method="bias"))
        assert count_parameters(model)["adapter_params"] == 4 * 2 * 32  # q and v of 4 layers, 32 outputs each
        env = tiny_sweep_env(tmp_path, [64], n_train=16, n_validation=4, n_test=8)
        code = main(["--preset", "full", "--model", str(env["bert"]), "--cache-dir", str(env["cache"]), "--n-train", "16",
                     "--n-validation", "4", "--n-test", "8", "--max-steps", "2", "--tokens-per-step", "256",
                     "--lengths", "64", "--seeds", "0", "--methods", "lora,bias", "--in-process", "--out", str(tmp_path),
                     "--name", "s"])
        rows = (tmp_path / "s" / "results.csv").read_text()
        assert code == 0 and ",bias,," in rows and ",lora,," in rows
    finally:
        unregister_method("bias")


@pytest.mark.slow
def test_readme_fits_a_screen_its_links_resolve_and_its_main_command_validates(tmp_path):
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 112  # a front page; measurement logs live in docs/results.md
    screen = "\n".join(readme.splitlines()[:40])  # the first screen: question, figure, both commands, timings, output
    assert "trade accuracy against memory and speed" in screen and "![" in screen
    assert screen.count("```bash") == 2 and "experiments/run.py" in screen and "pytest" in screen
    assert "Measured: " in screen and "an estimate, not yet measured" in screen and "lightning_logs/" in screen
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")):
                assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"
        assert "SPEC" + ".md" not in doc.read_text()  # a design note users do not have: never cited
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    main_job = next(b for b in blocks if "experiments/run.py" in b).strip()
    command = main_job.split("&& .venv/bin/python ", 1)[1].split()
    out = subprocess.run([sys.executable, *command, "--dry-run", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "20 cells" in out.stdout  # --preset cpu: 4 entries x 3 seeds at 512, and 2 cost cells at each of 4 lengths
    assert any("pytest" in b for b in blocks)
