"""Build configuration: one dataclass holds every knob that changes the built data."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

TRUNCATIONS = ("head", "tail", "head+tail")
MIN_LEN = 64
# Learned absolute position tables (BERT/RoBERTa-style) are extended by the sweep by copying them
# (Longformer recipe), so their native 512 is not a limit; this is the cap we allow for them.
MAX_EXTENDED_LEN = 32768
# Share of the token budget kept from the start under 'head+tail' (Sun et al. 2019 kept 128 + 382 of 510).
HEAD_SHARE = 0.25


def default_cache_dir() -> Path:
    """`$SSMLORA_CACHE` or `~/.cache/ssmlora/data`."""
    env = os.environ.get("SSMLORA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ssmlora" / "data"


@dataclass(frozen=True)
class BuildConfig:
    """Everything (besides the tokenizer) that determines a built DatasetDict."""

    task: str = field(metadata={"help": "registry name"})
    max_len: int = field(metadata={"help": "tokens per example INCLUDING the special tokens"})
    truncation: str = field(default="head", metadata={"help": "which part of a long document is kept: " + ", ".join(TRUNCATIONS)})
    seed: int = field(default=0, metadata={"help": "seeds splits, sampling and generation"})
    n_train: int | None = field(default=None, metadata={"help": "train examples (None: task default)"})
    n_validation: int | None = field(default=None, metadata={"help": "validation examples (None: task default)"})
    n_test: int | None = field(default=None, metadata={"help": "test examples (None: task default)"})
    source: str | None = field(default=None, metadata={
        "help": "hub tasks only: a local folder/file in the hub schema to load instead of the hub id"})

    def sizes(self, default: tuple[int, int, int]) -> dict[str, int]:
        """Requested example count per split."""
        given = (self.n_train, self.n_validation, self.n_test)
        return {s: (d if g is None else int(g)) for s, g, d in zip(("train", "validation", "test"), given, default)}

    def validate(self) -> None:
        """Checks that need no tokenizer (the length cap needs one: see tokenization.check_max_len)."""
        if self.truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {', '.join(TRUNCATIONS)}; got {self.truncation!r}")
        if int(self.max_len) < MIN_LEN:
            raise ValueError(f"max_len must be at least {MIN_LEN} tokens; got {self.max_len}")
        for name in ("n_train", "n_validation", "n_test"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be positive; got {v}")
