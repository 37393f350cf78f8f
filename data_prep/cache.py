"""On-disk cache of built DatasetDicts.

Layout: `<cache_dir>/<task>/<key>/` holds `save_to_disk` output plus `manifest.json`, written LAST, with the
size and sha256 of every file. A folder without a manifest, with a missing file, or whose files do not match
(a crash mid-write, a truncated arrow file) is treated as absent and rebuilt. Writes go to a temporary folder
that is renamed into place, so readers never see half a cache.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path

from datasets import DatasetDict, load_from_disk
from datasets.utils import logging as ds_logging

MANIFEST = "manifest.json"


def cache_key(parts: dict) -> str:
    """Short stable hash of everything that determines the data."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def is_valid(folder: Path) -> bool:
    """True only if the manifest exists and every listed file is present with its size and hash."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        listed = manifest["files"]
        for rel, meta in listed.items():
            p = folder / rel
            if not p.is_file() or p.stat().st_size != meta["size"] or _digest(p) != meta["sha256"]:
                return False
        return bool(listed)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def load(folder: Path, in_memory: bool = False) -> DatasetDict | None:
    """The cached DatasetDict (memory-mapped, or read into memory with `in_memory`), or None when absent or
    corrupt (a corrupt folder is removed)."""
    if not folder.exists():
        return None
    if not is_valid(folder):
        shutil.rmtree(folder, ignore_errors=True)
        return None
    try:
        return load_from_disk(str(folder), keep_in_memory=in_memory)
    except Exception:  # unreadable despite matching hashes (e.g. a library change): rebuild
        shutil.rmtree(folder, ignore_errors=True)
        return None


def save(ds: DatasetDict, folder: Path, key_parts: dict) -> DatasetDict:
    """Write `ds` atomically to `folder` and return it re-opened from there (memory-mapped)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()  # a progress bar per split is noise in logs and test output
    try:
        ds.save_to_disk(str(tmp))
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()
    files = {str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _digest(p)} for p in _files(tmp)}
    (tmp / MANIFEST).write_text(json.dumps({"key": key_parts, "files": files}, indent=1, sort_keys=True))
    if folder.exists() and is_valid(folder):  # a concurrent builder finished first: keep its (identical) copy
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)  # stale or corrupt leftovers
        try:
            tmp.rename(folder)
        except OSError:  # lost a race with another process that just renamed its copy into place
            shutil.rmtree(tmp, ignore_errors=True)
    return load_from_disk(str(folder))
