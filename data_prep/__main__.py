"""CLI: `python -m data_prep list | build TASK --max-len N | stats TASK [--max-len N]`.

Errors print one line (`error: ...`) to stderr and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import build_task, describe, get_task, list_tasks
from .config import TRUNCATIONS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="tasks, offline or hub, classes, source and licence")
    for name, what in (("build", "build (or load from cache) a task"), ("stats", "length percentiles, class balance, majority rate per split")):
        q = sub.add_parser(name, help=what)
        q.add_argument("task")
        q.add_argument("--max-len", type=int, default=512, help="tokens per example incl. special tokens (default 512)")
        q.add_argument("--tokenizer", default=None, help="alias, folder or hub id (default: offline MiniLM)")
        q.add_argument("--truncation", default="head", choices=TRUNCATIONS)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--cache-dir", default=None, help="default $SSMLORA_CACHE or ~/.cache/ssmlora/data")
        q.add_argument("--source", default=None, help="hub tasks: local folder in the hub schema")
        for s in ("train", "validation", "test"):
            q.add_argument(f"--n-{s}", type=int, default=None, help=f"{s} examples (default: task default)")
        q.add_argument("--rebuild", action="store_true", help="ignore the cache")
        q.add_argument("--json", action="store_true", help="stats as JSON")
    return p


def _list() -> None:
    print(f"{'task':14} {'kind':8} {'classes':>7}  source  [licence]")
    for name in list_tasks():
        s = get_task(name)
        print(f"{name:14} {s.kind:8} {len(s.labels):>7}  {s.source}  [{s.licence}]")


def _build(a) -> dict:
    t = time.perf_counter()
    ds = build_task(a.task, a.max_len, a.tokenizer, a.truncation, a.cache_dir, a.seed, n_train=a.n_train,
                    n_validation=a.n_validation, n_test=a.n_test, source=a.source, rebuild=a.rebuild)
    return {"ds": ds, "seconds": time.perf_counter() - t}


def _print_stats(ds, as_json: bool) -> None:
    st = describe(ds)
    if as_json:
        print(json.dumps(st, indent=1))
        return
    for split, s in st.items():
        d, k = s["doc_tokens"], s["kept_tokens"]
        print(f"{split:10} n={s['n']:<5} majority={s['majority_rate']:.3f}  truncated={s['truncated']:.2f}")
        print(f"{'':10} doc tokens  p10/p50/p90/max = {d['p10']}/{d['p50']}/{d['p90']}/{d['max']}")
        print(f"{'':10} kept tokens p10/p50/p90/max = {k['p10']}/{k['p50']}/{k['p90']}/{k['max']}")
        print(f"{'':10} classes {s['class_counts']}")


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "list":
            _list()
        elif a.cmd == "build":
            r = _build(a)
            ds = r["ds"]
            print(f"{a.task} max_len={a.max_len}: " + ", ".join(f"{s}={len(d)}" for s, d in ds.items())
                  + f" in {r['seconds']:.1f}s -> {ds['train'].cache_files[0]['filename'].rsplit('/', 2)[0]}")
        else:
            ds = _build(a)["ds"]
            _print_stats(ds, a.json)
            if a.task == "topic-mix" and not a.json:
                from .topic_mix import decidability, first_article_accuracy

                d = decidability(ds["test"])
                print(f"test: label decidable from the first L tokens: "
                      + ", ".join(f"{L}: {v:.1%}" for L, v in d.items())
                      + f"; first-article rule accuracy {first_article_accuracy(ds['test']):.1%}")
    except (ValueError, RuntimeError, OSError, ImportError) as e:  # ConnectionError is an OSError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
