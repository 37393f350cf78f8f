"""Task registry: every task is a `TaskSpec` registered under its CLI name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


class UnknownTaskError(ValueError):
    """Raised for a task name that is not registered; the message lists the known tasks."""


@dataclass(frozen=True)
class TaskSpec:
    """What a task is and how to build its raw examples."""

    name: str = field(metadata={"help": "CLI / registry name, e.g. 'topic-mix'"})
    kind: str = field(metadata={"help": "'offline' (built from installed packages) or 'hub' (datasets.load_dataset)"})
    labels: tuple[str, ...] = field(metadata={"help": "class names, index = integer label"})
    source: str = field(metadata={"help": "where the text comes from"})
    licence: str = field(metadata={"help": "licence of the source text"})
    description: str = field(metadata={"help": "one line: what is predicted from what"})
    builder: Callable = field(repr=False, metadata={"help": "fn(cfg: BuildConfig, tok) -> {split: [record]}"})
    per_length: bool = field(default=False, metadata={
        "help": "True when the examples themselves depend on max_len (needle, listops); False when the same "
                "documents are truncated at every length"})
    default_sizes: tuple[int, int, int] = field(default=(800, 100, 200), metadata={
        "help": "(train, validation, test) example counts when not overridden"})
    version: str = field(default="1", metadata={"help": "builder version: bump to invalidate caches"})


_REGISTRY: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    """Add a task; a second task with the same name is a programming error."""
    if spec.name in _REGISTRY:
        raise ValueError(f"task {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def list_tasks(kind: str | None = None) -> list[str]:
    """Registered task names, sorted; `kind` filters on 'offline' or 'hub'."""
    return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


def get_task(name: str) -> TaskSpec:
    """The spec of `name`, or UnknownTaskError naming every known task."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownTaskError(
            f"unknown task {name!r}; known tasks: {', '.join(list_tasks())} "
            f"(offline: {', '.join(list_tasks('offline'))})"
        ) from None
