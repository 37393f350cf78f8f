import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def experiments_run(monkeypatch):
    """`experiments/run.py` is a script, not a package: import it as `experiments_run` for in-process calls."""
    path = Path(__file__).resolve().parents[1] / "experiments" / "run.py"
    spec = importlib.util.spec_from_file_location("experiments_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "experiments_run", module)
    return module
