"""Long-document classification tasks for the LoRA vs SSMLoRA length sweep.

    from data_prep import build_task, list_tasks, get_task, UnknownTaskError, majority_rate
    ds = build_task("topic-mix", max_len=1024)          # DatasetDict: train / validation / test

See docs/tasks.md for the task list, sizes and sources.
"""

from . import catalog as _catalog  # noqa: F401  (registers the tasks)
from .build import build_task
from .config import MAX_EXTENDED_LEN, MIN_LEN, BuildConfig, default_cache_dir
from .hub import HubUnavailableError, check_hub
from .models import DEFAULT_MODEL, default_model_dir, resolve_model_path
from .registry import TaskSpec, UnknownTaskError, get_task, list_tasks
from .stats import describe, majority_rate, metadata, split_stats

__all__ = [
    "DEFAULT_MODEL", "MAX_EXTENDED_LEN", "MIN_LEN", "default_model_dir", "resolve_model_path",
    "BuildConfig", "HubUnavailableError", "TaskSpec", "check_hub", "UnknownTaskError", "build_task", "default_cache_dir",
    "describe", "get_task", "list_tasks", "majority_rate", "metadata", "split_stats",
]
