"""The sweep folder's files: the results table (one row per (method, length, seed) cell), its layout, its writes.

A ground layer beside `data_prep` (no torch): the sweep writes through it and the plots read through it.

`results.csv` is the contract between the sweep (`experiments/run.py`) and the plots (`plots/`). Each column's
kind (int, float, str, json) and when it must be filled is declared once, in :data:`COLUMNS`. Rates are
fractions in [0, 1]. Every row carries the schema version that wrote it and the hash of the sweep it belongs to,
so a row copied into the wrong folder or written by another version is caught, not plotted.

Reading is strict: :func:`read_results` raises :class:`ResultsFormatError` with one line naming the file and
line for anything it cannot vouch for (a row cut off mid-write, a bad number, a NUL byte, bytes that are not
UTF-8, an unknown header, another schema version, a duplicated cell, an ok row without its accuracy).
:func:`split_results` sorts the same file into good rows and bad lines without raising, and
:func:`repair_results` moves the bad lines to ``results.bad.csv`` (``python -m results repair PATH``).

Writing: :func:`write_results` replaces the file atomically (:func:`results.folder.write_atomically`, which every
file of a sweep folder goes through; :class:`results.folder.SweepFolder` names its paths). Several processes add rows with :func:`update_results`, a read-merge-write
under a lock on ``<path>.lock`` (left in place: deleting a lock file lets two writers lock different inodes;
on a shared filesystem it needs working flock, see :mod:`results.claims`). No torch here: the plots import
this module.
"""

from results.columns import (CELL_KEY, COLUMN_KINDS, COLUMN_NAMES, COLUMNS, EXTRAPOLATION_COLUMNS, FRONTIER_COLUMNS,
                             KINDS, NUMERIC_COLUMNS, RESULT_COLUMNS, SCHEMA_VERSION, Column, wilson_interval)
from results.folder import (CONFIG_FILE, EXTRAPOLATION_FILE, FRONTIER_FILE, PROBE_PREDICTIONS_FILE, REPORT_FILE,
                            RESULT_FILE, RESULTS_FILE, SweepFolder, cell_tag, csv_text, predictions_file,
                            trial_tag, write_atomically)
from results.reading import BadLine, ResultsFormatError, cell_key, read_results, split_results, typed
from results.writing import repair_results, update_results, write_extrapolation, write_results

__all__ = ["CELL_KEY", "COLUMN_KINDS", "COLUMN_NAMES", "COLUMNS", "CONFIG_FILE", "EXTRAPOLATION_COLUMNS",
           "EXTRAPOLATION_FILE", "FRONTIER_COLUMNS", "FRONTIER_FILE", "KINDS", "NUMERIC_COLUMNS",
           "PROBE_PREDICTIONS_FILE", "REPORT_FILE", "RESULTS_FILE", "RESULT_COLUMNS", "RESULT_FILE", "SCHEMA_VERSION",
           "BadLine", "Column", "ResultsFormatError", "SweepFolder", "cell_key", "cell_tag", "csv_text",
           "predictions_file", "read_results", "repair_results", "split_results", "trial_tag", "typed", "update_results",
           "wilson_interval", "write_atomically", "write_extrapolation", "write_results"]
