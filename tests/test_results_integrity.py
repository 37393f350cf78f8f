"""results.csv integrity: strict reading, repair, locked merges, umask, and cell claims across processes."""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import results as R
from results.__main__ import main as results_main
from results.claims import claim_cell, current_holder, describe_holder
from results import (COLUMN_NAMES, SCHEMA_VERSION, ResultsFormatError, read_results, repair_results,
                             split_results, typed, update_results, write_results)

REPO = Path(__file__).resolve().parents[1]
HASH = "5eed0123abcd"
FORK = mp.get_context("fork")  # the children only lock and write files: no need to re-import the test session


def cell_row(seed: int, method: str = "lora", **extra) -> dict:
    row = {"task": "topic-mix", "model": "tiny", "method": method, "variant": method, "max_len": 512, "seed": seed, "status": "ok",
           "accuracy": 0.75, "macro_f1": 0.7, "majority_rate": 0.25, "n_test": 48, "adapter_params": 1000,
           "head_params": 10, "trainable_params": 1010, "train_steps": 15, "wall_s": 12.5, "devices": "1x1"}
    return {**row, **extra}


def good_file(path: Path, n: int = 4) -> list[str]:
    """A valid results.csv with ``n`` rows; returns its physical lines (header is line 1)."""
    write_results(path, [cell_row(s) for s in range(n)], sweep_hash=HASH)
    return path.read_bytes().decode().splitlines(keepends=True)


def format_error(path: Path) -> ResultsFormatError:
    with pytest.raises(ResultsFormatError) as info:
        read_results(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return info.value


# ---------------------------------------------------------------- contract and strict reading

def test_round_trip_stamps_version_and_hash(tmp_path):
    path = tmp_path / "results.csv"
    failed = {"status": "failed: RuntimeError: first line\nsecond, \"quoted\" line", "accuracy": None,
              "n_test": None, "accuracy_by_depth": None}
    write_results(path, [cell_row(0, accuracy_by_depth={"0.0": 0.5}), cell_row(1, **failed)], sweep_hash=HASH)
    rows = read_results(path, sweep_hash=HASH)
    assert list(rows[0]) == COLUMN_NAMES[:] and COLUMN_NAMES[:2] == ["schema_version", "sweep_hash"]
    assert [(r["schema_version"], r["sweep_hash"]) for r in rows] == [(str(SCHEMA_VERSION), HASH)] * 2
    assert rows[1]["status"] == failed["status"] and rows[1]["accuracy"] == ""
    first = typed(rows[0])
    assert (first["max_len"], first["accuracy"], first["mfu"]) == (512, 0.75, None)
    assert first["accuracy_by_depth"] == {"0.0": 0.5}


def test_plots_take_numeric_columns_from_the_contract():
    from plots.data import NUMERIC_COLUMNS
    assert NUMERIC_COLUMNS is R.NUMERIC_COLUMNS
    assert {"accuracy", "max_len", "wall_s"} <= set(NUMERIC_COLUMNS) and "status" not in NUMERIC_COLUMNS


@pytest.mark.parametrize("followed_by_rows", [False, True], ids=["cut-at-end", "torn-append"])
def test_row_truncated_mid_write_names_its_line(tmp_path, followed_by_rows):
    path = tmp_path / "results.csv"
    lines = good_file(path)
    cut = lines[3][: len(lines[3]) // 2]  # line 4, cut in the middle of its fields
    tail = "\n" + "".join(lines[4:]) if followed_by_rows else ""
    path.write_text("".join(lines[:3]) + cut + tail)
    err = format_error(path)
    assert err.line == 4 and "line 4:" in str(err)
    assert ("fields, the header has" in err.reason) if followed_by_rows else ("cut off" in err.reason)


def test_binary_garbage_is_a_format_error_not_a_decode_error(tmp_path):
    path = tmp_path / "results.csv"
    path.write_bytes(random.Random(0).randbytes(4096))
    err = format_error(path)
    assert err.line == 1 and "not UTF-8" in err.reason
    lines = good_file(path)
    path.write_bytes("".join(lines).encode() + b"\xff\xfe\x00garbage\x9c\n")
    assert format_error(path).line == len(lines) + 1


def test_nul_byte_in_a_key_field_is_an_error(tmp_path):
    path = tmp_path / "results.csv"
    lines = good_file(path)
    lines[2] = lines[2].replace("lora", "lo\x00ra")
    path.write_text("".join(lines))
    err = format_error(path)
    assert err.line == 3 and "NUL" in err.reason


def test_other_schema_version_is_named(tmp_path):
    path = tmp_path / "results.csv"
    lines = good_file(path)
    lines[2] = "9" + lines[2][1:]
    path.write_text("".join(lines))
    err = format_error(path)
    assert err.line == 3 and "schema_version 9" in err.reason and f"reads schema {SCHEMA_VERSION}" in err.reason


@pytest.mark.parametrize("header, expected", [
    ("v1", "written by results schema 1"),
    ("v9", "written by results schema 9"),
    ("other", "lacks columns"),
])
def test_unknown_header_says_which_version_and_how_to_fix(tmp_path, header, expected):
    path = tmp_path / "results.csv"
    lines = good_file(path)
    rows = list(csv.reader(lines))
    if header == "v1":
        rows = [r[2:] for r in rows]
    elif header == "v9":
        rows = [r + ["new_metric"] if i == 0 else ["9"] + r[1:] + ["1"] for i, r in enumerate(rows)]
    else:
        rows = [["task", "acc"], ["x", "1"]]
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    err = format_error(path)
    assert err.line == 1 and expected in err.reason and "new --out" in err.reason


@pytest.mark.parametrize("column, value, allowed", [
    ("accuracy", "0.7x", False),
    ("max_len", "512.0", False),
    ("accuracy", "nan", False),
    ("accuracy", "73", False),          # a percentage, not a fraction
    ("accuracy", "", False),            # an ok row must have its accuracy
    ("n_test", "", False),
    ("sweep_hash", "not-hex", False),
    ("accuracy_by_depth", "{0.1:", False),
    ("peak_mem_mb", "", True),          # not measured: allowed
    ("mfu", "1e-3", True),
])
def test_numbers_and_required_fields(tmp_path, column, value, allowed):
    path = tmp_path / "results.csv"
    lines = good_file(path)
    rows = list(csv.reader(lines))
    rows[2][COLUMN_NAMES.index(column)] = value
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    if allowed:
        assert len(read_results(path)) == 4
    else:
        err = format_error(path)
        assert err.line == 3 and column in err.reason


def test_failed_rows_may_lack_metrics_and_foreign_rows_are_refused(tmp_path):
    path = tmp_path / "results.csv"
    write_results(path, [cell_row(0, status="oom", accuracy=None, macro_f1=None, wall_s=None)], sweep_hash=HASH)
    assert read_results(path)[0]["accuracy"] == ""
    err = pytest.raises(ResultsFormatError, read_results, path, sweep_hash="0ther0").value
    assert err.line == 2 and "sweep 5eed0123abcd" in err.reason


def test_write_refuses_a_bad_row_before_touching_the_file(tmp_path):
    path = tmp_path / "results.csv"
    good_file(path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="accuracy is empty"):
        write_results(path, [cell_row(0, accuracy=None)], sweep_hash=HASH)
    with pytest.raises(ValueError, match="sweep_hash"):
        write_results(path, [cell_row(0)])
    with pytest.raises(ValueError, match="twice"):
        write_results(path, [cell_row(0), cell_row(0)], sweep_hash=HASH)
    assert path.read_bytes() == before


# ---------------------------------------------------------------- split and repair

def damaged_file(path: Path) -> tuple[list[str], dict[int, str]]:
    """Six good rows with three damaged lines among them; returns (good seeds, {line: reason word})."""
    lines = good_file(path, 6)
    lines[2] = lines[2][:30] + "\n"                      # line 3: cut off
    lines[4] = lines[4].replace("lora", "lo\x00ra")       # line 5: NUL
    data = "".join(lines).encode() + b"\x8f\xff garbage\n"  # line 8: not UTF-8
    path.write_bytes(data)
    return ["0", "2", "4", "5"], {3: "fields", 5: "NUL", 8: "UTF-8"}


def test_split_sorts_good_rows_from_bad_lines(tmp_path):
    path = tmp_path / "results.csv"
    seeds, expected = damaged_file(path)
    good, bad = split_results(path)
    assert [r["seed"] for r in good] == seeds
    assert {b.line: b.reason for b in bad}.keys() == expected.keys()
    assert all(word in next(b.reason for b in bad if b.line == line) for line, word in expected.items())


def test_repair_moves_bad_lines_and_keeps_good_rows(tmp_path):
    path = tmp_path / "results.csv"
    seeds, expected = damaged_file(path)
    moved = repair_results(path)
    assert [b.line for b in moved] == sorted(expected)
    assert [r["seed"] for r in read_results(path)] == seeds   # readable again, good rows kept
    with (tmp_path / "results.bad.csv").open(newline="") as fh:
        saved = list(csv.DictReader(fh))
    assert [int(s["line"]) for s in saved] == sorted(expected)
    assert "lo\\x00ra" in saved[1]["raw"] and "\\x8f\\xff garbage" in saved[2]["raw"]
    assert repair_results(path) == []  # nothing left to move


def test_repair_refuses_a_file_without_a_known_header(tmp_path):
    path = tmp_path / "results.csv"
    path.write_bytes(random.Random(1).randbytes(2000))
    before = path.read_bytes()
    with pytest.raises(ResultsFormatError, match="not repairable"):
        repair_results(path)
    assert path.read_bytes() == before and not (tmp_path / "results.bad.csv").exists()


def test_results_cli_checks_and_repairs(tmp_path):
    path = tmp_path / "results.csv"
    damaged_file(path)
    assert results_main(["check", str(path)]) == 1
    assert results_main(["repair", str(path)]) == 0 and results_main(["check", str(path)]) == 0


# ---------------------------------------------------------------- locked merges and file modes

def test_update_replaces_the_same_cell_and_appends_new_ones(tmp_path):
    path = tmp_path / "results.csv"
    update_results(path, [cell_row(0), cell_row(1)], sweep_hash=HASH)
    merged = update_results(path, [cell_row(0, accuracy=0.9), cell_row(2)], sweep_hash=HASH)
    assert [(r["seed"], r["accuracy"]) for r in merged] == [("0", "0.9"), ("1", "0.75"), ("2", "0.75")]
    assert read_results(path) == merged
    with pytest.raises(ResultsFormatError, match="not of this sweep"):
        update_results(path, [cell_row(3)], sweep_hash="abcdef99")


def _write_rows(path: str, worker: int, n: int, start) -> None:
    start.wait(30)
    for i in range(n):
        update_results(path, [cell_row(worker * 1000 + i, method=f"m{worker}")], sweep_hash=HASH)


def test_concurrent_updates_lose_no_row(tmp_path):
    path = tmp_path / "results.csv"
    start = FORK.Event()
    workers = [FORK.Process(target=_write_rows, args=(str(path), w, 20, start)) for w in (1, 2)]
    for p in workers:
        p.start()
    start.set()
    for p in workers:
        p.join(180)
    assert [p.exitcode for p in workers] == [0, 0]
    rows = read_results(path)
    assert len(rows) == 40
    assert {(r["method"], int(r["seed"])) for r in rows} == {(f"m{w}", w * 1000 + i) for w in (1, 2) for i in range(20)}
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_new_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        update_results(tmp_path / "results.csv", [cell_row(0)], sweep_hash=HASH)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "results.csv").stat().st_mode) == 0o644
    os.chmod(tmp_path / "results.csv", 0o664)  # a mode widened on purpose survives the next rewrite
    update_results(tmp_path / "results.csv", [cell_row(1)], sweep_hash=HASH)
    assert stat.S_IMODE((tmp_path / "results.csv").stat().st_mode) == 0o664


# ---------------------------------------------------------------- cell claims

def _try_claim(folder: str, tag: str, answers) -> None:
    claim = claim_cell(folder, tag)
    answers.put((claim is not None, describe_holder(folder, tag) if claim is None else claim.note))
    if claim:
        claim.release()


def _hold_claim(folder: str, tag: str, ready) -> None:
    claim = claim_cell(folder, tag)
    if claim is not None:
        ready.set()
        time.sleep(300)


def test_a_held_cell_cannot_be_claimed_by_another_process(tmp_path):
    answers = FORK.Queue()
    with claim_cell(tmp_path, "lora-L512-s0") as claim:
        assert claim.held and claim.stale_from is None
        assert claim_cell(tmp_path, "lora-L512-s0") is None  # nor by a second claim of this process
        claim_cell(tmp_path, "lora-L512-s1").release()  # other cells are free
        child = FORK.Process(target=_try_claim, args=(str(tmp_path), "lora-L512-s0", answers))
        child.start()
        got, said = answers.get(timeout=60)
        child.join(30)
        assert not got and f"held by pid {os.getpid()} on " in said
        assert claim.held and claim_cell(tmp_path, "lora-L512-s0") is None  # the child's exit freed nothing
    assert not claim.held and current_holder(tmp_path, "lora-L512-s0") is None
    child = FORK.Process(target=_try_claim, args=(str(tmp_path), "lora-L512-s0", answers))
    child.start()
    assert answers.get(timeout=60) == (True, None)  # released cleanly: free, and no stale report
    child.join(30)


def test_claim_of_a_killed_holder_is_taken_over_and_reported(tmp_path):
    ready = FORK.Event()
    holder = FORK.Process(target=_hold_claim, args=(str(tmp_path), "ssmlora-L1024-s2", ready))
    holder.start()
    try:
        assert ready.wait(60)
        assert claim_cell(tmp_path, "ssmlora-L1024-s2") is None
        assert current_holder(tmp_path, "ssmlora-L1024-s2").pid == holder.pid
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(30)
    claim = claim_cell(tmp_path, "ssmlora-L1024-s2")
    assert claim is not None and claim.stale_from.pid == holder.pid
    assert claim.stale_from.alive() is False and f"pid {holder.pid} " in claim.note
    with claim:
        assert current_holder(tmp_path, "ssmlora-L1024-s2").pid == os.getpid()
    assert current_holder(tmp_path, "ssmlora-L1024-s2") is None


def test_claim_tags_must_be_file_names(tmp_path):
    with pytest.raises(ValueError, match="file name"):
        claim_cell(tmp_path, "../escape")


# ---------------------------------------------------------------- the plots command on a damaged table

def test_plots_cli_on_garbage_results_is_one_error_line(tmp_path):
    (tmp_path / "results.csv").write_bytes(random.Random(2).randbytes(3000))
    result = subprocess.run([sys.executable, "-m", "plots", str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:") and "line 1" in result.stderr


def test_write_atomically_replaces_whole_files_and_leaves_nothing_behind(tmp_path):
    """Text, bytes and a writer function each replace the file whole; a writer that fails leaves the old file and
    no temp file; a replaced file keeps its mode; the temp name carries the process id."""
    from results import write_atomically

    target = tmp_path / "deep" / "f.json"
    write_atomically(target, '{"a": 1}')
    assert target.read_text() == '{"a": 1}'
    os.chmod(target, 0o640)
    write_atomically(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01" and stat.S_IMODE(target.stat().st_mode) == 0o640
    seen = []

    def writer(tmp: Path) -> None:
        seen.append(tmp.name)
        tmp.write_text("from a writer")

    write_atomically(target, writer)
    assert target.read_text() == "from a writer" and f".{os.getpid()}." in seen[0]

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(target, broken)
    assert target.read_text() == "from a writer"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]


def test_every_file_of_a_sweep_folder_is_written_through_one_function():
    """No module replaces a file by hand: os.replace appears only in results/folder.py (data_prep's cache renames
    a whole folder, its own atomic step)."""
    hand_written = [str(p.relative_to(REPO)) for pkg in ("results", "ssmlora", "plots", "benchmarks", "experiments")
                    for p in (REPO / pkg).rglob("*.py") if "os.replace(" in p.read_text()]
    assert hand_written == ["results/folder.py"]


def test_sweep_folder_names_the_paths_the_sweep_and_plots_use(tmp_path):
    from plots.data import cell_folder
    from results import SweepFolder, cell_tag, trial_tag
    from ssmlora.config import AdapterConfig
    from ssmlora.lab.cell import CellConfig

    folder = SweepFolder(tmp_path / "s")
    assert folder.results == tmp_path / "s" / "results.csv" and folder.config == tmp_path / "s" / "config.json"
    assert folder.cell_of("ssmlora:scan", 512, 0) == tmp_path / "s" / "cells" / "ssmlora-scan-L512-s0"
    assert CellConfig(adapter=AdapterConfig(method="lora"), max_len=512, seed=3).tag() == cell_tag("lora", 512, 3) \
        == "lora-L512-s3"
    assert folder.trial(trial_tag("lora", 512, 0, 5e-4)) == tmp_path / "s" / "tune" / "lora-L512-s0-lr0.0005"
    sweep = type("S", (), {"path": tmp_path / "s"})()
    assert cell_folder(sweep, "ssmlora:scan", 512, 0) == folder.cell_of("ssmlora:scan", 512, 0)
