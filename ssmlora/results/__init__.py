"""The sweep's results table: one row per (method, length, seed) cell.

`results.csv` is the contract between the sweep (`experiments/run.py`) and the plots (`plots/`). Each column's
kind (int, float, str, json) and when it must be filled is declared once, in :data:`COLUMNS`. Rates are
fractions in [0, 1]. Every row carries the schema version that wrote it and the hash of the sweep it belongs to,
so a row copied into the wrong folder or written by another version is caught, not plotted.

Reading is strict: :func:`read_results` raises :class:`ResultsFormatError` with one line naming the file and
line for anything it cannot vouch for (a row cut off mid-write, a bad number, a NUL byte, bytes that are not
UTF-8, an unknown header, another schema version, a duplicated cell, an ok row without its accuracy).
:func:`split_results` sorts the same file into good rows and bad lines without raising, and
:func:`repair_results` moves the bad lines to ``results.bad.csv`` (``python -m ssmlora.results repair PATH``).

Writing: :func:`write_results` replaces the file atomically (temp file, fsync, rename; the user's umask
decides the mode of a new file). Several processes add rows with :func:`update_results`, a read-merge-write
under a lock on ``<path>.lock`` (left in place: deleting a lock file lets two writers lock different inodes;
on a shared filesystem it needs working flock, see :mod:`ssmlora.claims`). No torch here: the plots import
this module.
"""

from ssmlora.results.columns import (CELL_KEY, COLUMN_KINDS, COLUMN_NAMES, COLUMNS, EXTRAPOLATION_COLUMNS,
                                     EXTRAPOLATION_FILE, FRONTIER_COLUMNS, KINDS, NUMERIC_COLUMNS, RESULT_COLUMNS,
                                     SCHEMA_VERSION, Column, wilson_interval)
from ssmlora.results.reading import BadLine, ResultsFormatError, cell_key, read_results, split_results, typed
from ssmlora.results.writing import repair_results, update_results, write_extrapolation, write_results

__all__ = ["CELL_KEY", "COLUMN_KINDS", "COLUMN_NAMES", "COLUMNS", "EXTRAPOLATION_COLUMNS", "EXTRAPOLATION_FILE",
           "FRONTIER_COLUMNS", "KINDS", "NUMERIC_COLUMNS", "RESULT_COLUMNS", "SCHEMA_VERSION", "BadLine", "Column",
           "ResultsFormatError", "cell_key", "read_results", "repair_results", "split_results", "typed",
           "update_results", "wilson_interval", "write_extrapolation", "write_results"]
