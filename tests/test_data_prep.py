"""data_prep: registry, errors, tokenization/truncation, caching, determinism and the per-task guarantees."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from data_prep import UnknownTaskError, build_task, get_task, list_tasks, majority_rate, metadata
from data_prep.cache import MANIFEST
from data_prep.tokenization import cut, load_tokenizer

SMALL = dict(n_train=12, n_validation=4, n_test=8)
OFFLINE = ("topic-mix", "needle", "listops", "sotu")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each offline task once at max_len 256 with small splits (module-wide: building is the slow part)."""
    cache = tmp_path_factory.mktemp("cache")
    return {t: build_task(t, max_len=256, cache_dir=cache, **SMALL) for t in OFFLINE}


# ---------------------------------------------------------------- registry and bad input

def test_registry_lists_offline_and_hub_tasks():
    assert set(OFFLINE) <= set(list_tasks("offline"))
    assert {"imdb", "hyperpartisan", "contract_nli", "boolq"} <= set(list_tasks("hub"))
    assert get_task("topic-mix").labels == ("business", "entertainment", "politics", "sports", "tech")


def test_unknown_task_lists_known_ones(tmp_path):
    with pytest.raises(UnknownTaskError) as e:
        build_task("no-such-task", cache_dir=tmp_path)
    assert isinstance(e.value, ValueError)
    for name in list_tasks():
        assert name in str(e.value)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_len=63), "at least 64"),
    (dict(max_len=10**6), "between 64 and 32768"),
    (dict(truncation="middle"), "truncation must be one of head, tail, head\\+tail"),
    (dict(n_train=0), "n_train must be positive"),
])
def test_bad_arguments_raise_value_error(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_task("listops", cache_dir=tmp_path, **{"max_len": 128, **kwargs})


def test_truncation_rules():
    ids = list(range(10))
    assert cut(ids, 4, "head") == ([0, 1, 2, 3], 6)
    assert cut(ids, 4, "tail") == ([6, 7, 8, 9], 6)
    assert cut(ids, 8, "head+tail") == ([0, 1, 4, 5, 6, 7, 8, 9], 2)  # 25 % head, 75 % tail
    assert cut(ids, 20, "tail") == (ids, 0)


# ---------------------------------------------------------------- schema common to every offline task

@pytest.mark.parametrize("task", OFFLINE)
def test_schema_and_special_tokens(built, tok, task):
    ds = built[task]
    assert list(ds) == ["train", "validation", "test"]
    for split in ds.values():
        assert {"input_ids", "label", "n_tokens", "n_tokens_cut", "doc_id", "text"} <= set(split.column_names)
        assert split.features["label"].names == list(get_task(task).labels)
        for row in split:
            ids = row["input_ids"]
            assert len(ids) == row["n_tokens"] <= 256
            assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
            assert row["n_tokens_cut"] >= 0
        meta = metadata(split)
        assert meta["task"] == task and meta["majority_rate"] == pytest.approx(majority_rate(split))


@pytest.mark.parametrize("task", OFFLINE)
def test_splits_disjoint_by_document(built, task):
    ds = built[task]
    docs = {s: set(ds[s]["doc_id"]) for s in ds}
    assert not (docs["train"] & docs["validation"] or docs["train"] & docs["test"] or docs["validation"] & docs["test"])
    if "article_ids" in ds["train"].column_names:  # BBC-based tasks: no source article in two splits
        arts = {s: {a for row in ds[s]["article_ids"] for a in row} for s in ds}
        assert not (arts["train"] & arts["test"] or arts["train"] & arts["validation"] or arts["validation"] & arts["test"])


def test_explicit_truncation_is_recorded(tok, tmp_path):
    """sotu speeches are far longer than 128 tokens: every example is cut, and kept + cut = full length."""
    head = build_task("sotu", max_len=128, cache_dir=tmp_path, n_train=3, n_validation=1, n_test=2)
    tail = build_task("sotu", max_len=128, cache_dir=tmp_path, truncation="tail", n_train=3, n_validation=1, n_test=2)
    for h, t in zip(head["test"], tail["test"]):
        full = tok(h["text"], add_special_tokens=False, verbose=False)["input_ids"]
        assert h["n_tokens"] == 128 and h["n_tokens_cut"] == len(full) - 126
        assert h["input_ids"][1:-1] == full[:126] and t["input_ids"][1:-1] == full[-126:]


# ---------------------------------------------------------------- determinism and cache

def test_deterministic_across_fresh_builds(tmp_path):
    a = build_task("topic-mix", max_len=128, cache_dir=tmp_path / "a", **SMALL)
    b = build_task("topic-mix", max_len=128, cache_dir=tmp_path / "b", **SMALL)
    for s in a:
        assert a[s]["doc_id"] == b[s]["doc_id"] and a[s]["label"] == b[s]["label"]
        assert a[s]["input_ids"] == b[s]["input_ids"]
    c = build_task("topic-mix", max_len=128, cache_dir=tmp_path / "c", seed=1, **SMALL)
    assert c["test"]["article_ids"] != a["test"]["article_ids"]


def _cache_folder(ds) -> Path:
    return Path(ds["train"].cache_files[0]["filename"]).parents[1]


def test_second_build_is_a_cache_hit(tmp_path):
    first = build_task("listops", max_len=128, cache_dir=tmp_path, **SMALL)
    t = time.perf_counter()
    second = build_task("listops", max_len=128, cache_dir=tmp_path, **SMALL)
    assert time.perf_counter() - t < 5
    assert _cache_folder(second) == _cache_folder(first)
    assert (_cache_folder(first) / MANIFEST).is_file()
    other = build_task("listops", max_len=192, cache_dir=tmp_path, **SMALL)  # length is part of the key
    assert _cache_folder(other) != _cache_folder(first)
    # A cell reads its splits into memory (their pages must not join a later phase's RSS): the same rows, no
    # mapped file behind them.
    loaded = build_task("listops", max_len=128, cache_dir=tmp_path, only_cached=True, in_memory=True, **SMALL)
    for split in first:
        assert loaded[split].cache_files == [] and first[split].cache_files != []
        assert loaded[split].to_dict() == first[split].to_dict()


@pytest.mark.parametrize("damage", ["truncate_arrow", "drop_manifest", "delete_file"])
def test_corrupt_cache_is_rebuilt(tmp_path, damage):
    ref = build_task("listops", max_len=128, cache_dir=tmp_path, **SMALL)
    folder = _cache_folder(ref)
    expected = ref["test"].to_dict()["input_ids"]  # materialise: columns are lazy views of the files we damage
    arrow = next(folder.rglob("*.arrow"))
    if damage == "truncate_arrow":
        arrow.write_bytes(arrow.read_bytes()[:100])
    elif damage == "drop_manifest":
        (folder / MANIFEST).unlink()
    else:
        arrow.unlink()
    again = build_task("listops", max_len=128, cache_dir=tmp_path, **SMALL)
    assert again["test"].to_dict()["input_ids"] == expected
    assert (folder / MANIFEST).is_file()


# ---------------------------------------------------------------- topic-mix

def test_topic_mix_label_is_strict_plurality(built):
    from collections import Counter

    for split in built["topic-mix"].values():
        names = split.features["label"].names
        for arts, y in zip(split["article_ids"], split["label"]):
            counts = Counter(a.split("/")[0] for a in arts).most_common()
            assert counts[0][0] == names[y] and counts[0][1] > counts[1][1]
            assert len(arts) == len(set(arts))  # no article twice in a document


def test_topic_mix_same_documents_at_every_length(tmp_path, tok):
    short = build_task("topic-mix", max_len=128, cache_dir=tmp_path, **SMALL)["test"]
    long = build_task("topic-mix", max_len=4096, cache_dir=tmp_path, **SMALL)["test"]
    assert short["article_ids"] == long["article_ids"] and short["label"] == long["label"]
    for s, l in zip(short["input_ids"], long["input_ids"]):
        assert l[1:127] == s[1:-1]
    assert min(long["n_tokens"]) == 4096  # documents (~8k tokens) fill the longest default length
    # the stored ids are the concatenated article encodings: equal to tokenizing the text itself
    row = short[0]
    full = tok(row["text"], add_special_tokens=False, verbose=False)["input_ids"]
    assert row["n_tokens"] + row["n_tokens_cut"] - 2 == len(full) and row["input_ids"][1:-1] == full[:126]


def test_topic_mix_needs_context(tmp_path):
    from data_prep.topic_mix import decidability, first_article_accuracy

    test = build_task("topic-mix", max_len=128, cache_dir=tmp_path, n_train=5, n_validation=5, n_test=200)["test"]
    assert majority_rate(test) == pytest.approx(0.2)
    assert 0.3 <= first_article_accuracy(test) <= 0.5
    d = decidability(test, (512, 1024, 2048, 4096, 32768))
    assert d[512] < d[1024] < d[2048] < d[4096] < d[32768] == 1.0


# ---------------------------------------------------------------- needle

def test_needle_fills_4096_and_records_depth(tmp_path):
    from data_prep.needle import read_label

    ds = build_task("needle", max_len=4096, cache_dir=tmp_path, n_train=2, n_validation=2, n_test=10)
    for row in ds["test"]:
        assert row["n_tokens"] >= 0.95 * 4096
        assert 0.0 <= row["depth"] <= 1.0
        assert read_label(row["text"]) == row["label"]


def test_labels_follow_the_needle(built, tok):
    """Move each needle into another example's haystack: the oracle's label follows the needle, so the
    haystack carries no label information that the needle does not."""
    from data_prep.needle import CODE_WORDS, TEMPLATE, read_label

    test = built["needle"]["test"]
    needles = [tok(TEMPLATE.format(w), add_special_tokens=False)["input_ids"] for w in CODE_WORDS]
    hay = []
    for ids, y in zip(test["input_ids"], test["label"]):
        n = needles[y]
        i = next(k for k in range(len(ids)) if ids[k:k + len(n)] == n)
        hay.append((ids[:i], ids[i + len(n):]))
        # only one code word in the whole example: the needle's
        words = set(tok.convert_ids_to_tokens(ids)) & set(CODE_WORDS)
        assert words == {CODE_WORDS[y]}
    labels = test["label"]
    shifted = labels[1:] + labels[:1]
    for (pre, post), y in zip(hay, shifted):
        assert read_label(tok.decode(pre + needles[y] + post)) == y
    assert shifted != labels


# ---------------------------------------------------------------- listops

def _evaluate(expr: str) -> int:
    """Independent ListOps evaluator: a stack machine over the whitespace tokens."""
    stack: list[list] = []
    for token in expr.split():
        if token.startswith("["):
            stack.append([token])
        elif token == "]":
            op, *args = stack.pop()
            value = {"[MAX": max(args), "[MIN": min(args), "[MED": sorted(args)[(len(args) - 1) // 2] if len(args) % 2
                     else (sorted(args)[len(args) // 2 - 1] + sorted(args)[len(args) // 2]) // 2,
                     "[SM": sum(args) % 10}[op]
            if not stack:
                return value
            stack[-1].append(value)
        else:
            if not stack:
                return int(token)
            stack[-1].append(int(token))
    raise AssertionError(f"unbalanced expression: {expr[:80]}")


def test_listops_labels_equal_expression_values(built):
    for split in built["listops"].values():
        for row in split:
            assert _evaluate(row["text"]) == row["label"]
            assert row["n_tokens_cut"] == 0 and 128 <= row["n_tokens"] <= 256


# ---------------------------------------------------------------- hub tasks (local fixtures, no network)

FIXTURES = Path(__file__).parent / "fixtures"


HUB_TASKS = [("imdb", False), ("boolq", True), ("contract_nli", True), ("hyperpartisan", False), ("arxiv", False)]


def _parquet_fixture(task: str, folder: Path) -> Path:
    """The task's fixture rows (tests/fixtures/hub_<task>/<split>.jsonl, in the source's schema) written as parquet,
    the format the hub serves them in; a column with no value in a split (SCROLLS' unlabelled test outputs) is
    typed string, as in the source."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((FIXTURES / f"hub_{task}").glob("*.jsonl")):
        table = pa.Table.from_pylist([json.loads(line) for line in path.read_text().splitlines()])
        table = table.cast(pa.schema([pa.field(f.name, pa.string() if pa.types.is_null(f.type) else f.type)
                                      for f in table.schema]))
        pq.write_table(table, folder / f"{path.stem}.parquet")
    return folder


@pytest.mark.parametrize("task, pair", HUB_TASKS)
def test_hub_conversion_on_local_fixtures(tmp_path, tok, task, pair):
    ds = build_task(task, max_len=64, cache_dir=tmp_path, source=str(_parquet_fixture(task, tmp_path / "src")))
    assert all(len(ds[s]) > 0 for s in ds)
    docs = [set(ds[s]["doc_id"]) for s in ds]
    assert not (docs[0] & docs[1] or docs[0] & docs[2] or docs[1] & docs[2])
    for row in ds["train"]:
        assert len(row["input_ids"]) == row["n_tokens"] <= 64
        if pair:  # question / hypothesis kept whole after the (cut) document
            q = tok(row["text_pair"], add_special_tokens=False)["input_ids"]
            assert row["input_ids"][-len(q) - 1:-1] == q
    if task == "contract_nli":  # unlabelled SCROLLS test rows are dropped; validation serves as test
        assert all(d.startswith("contract_nli/va") for d in ds["test"]["doc_id"])


@pytest.mark.parametrize("task", [t for t, _ in HUB_TASKS])
def test_hub_tasks_read_the_pinned_parquet_files(tmp_path, monkeypatch, task):
    """Without `source=`, a hub task reads `<config>/<split>/*.parquet` at the source's pinned revision (the hub's
    parquet conversion) through datasets' parquet loader; here the hf:// paths are served from a local mirror."""
    import datasets

    import data_prep.hub as hub

    src = hub.SOURCES[task]
    fixture = _parquet_fixture(task, tmp_path / "fixture")
    mirror = tmp_path / "mirror"
    for ours, theirs in src.splits.items():
        if (fixture / f"{theirs}.parquet").exists():
            (mirror / theirs).mkdir(parents=True, exist_ok=True)
            (fixture / f"{theirs}.parquet").rename(mirror / theirs / "0000.parquet")
    asked, real = [], datasets.load_dataset

    def served(path, data_files=None, **kw):
        assert path == "parquet"
        asked.append(data_files)
        prefix = f"hf://datasets/{src.hub_id}@refs%2Fconvert%2Fparquet/{src.config or 'default'}/"
        local = {}
        for split, url in data_files.items():
            assert url == f"{prefix}{split}/*.parquet"
            if (mirror / split).exists():
                local[split] = str(mirror / split / "*.parquet")
        return real("parquet", data_files=local, **kw)

    monkeypatch.setattr(hub, "check_hub", lambda task: None)
    monkeypatch.setattr(datasets, "load_dataset", served)
    ds = build_task(task, max_len=64, cache_dir=tmp_path / "cache")
    assert len(asked) == 1 and src.revision == "refs/convert/parquet"
    assert set(asked[0]) == set(src.splits.values())
    assert all(len(ds[s]) > 0 for s in ds)


def test_hub_task_offline_fails_fast(tmp_path, monkeypatch):
    from data_prep import HubUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(HubUnavailableError) as e:
        build_task("imdb", max_len=128, cache_dir=tmp_path)
    assert time.perf_counter() - t < 5
    for name in OFFLINE:
        assert name in str(e.value)


def test_hub_probe_failure_fails_fast(tmp_path, monkeypatch):
    import data_prep.hub as hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # .invalid never resolves
    with pytest.raises(hub.HubUnavailableError, match="offline tasks: listops, needle, sotu, topic-mix"):
        build_task("boolq", max_len=128, cache_dir=tmp_path)


# ---------------------------------------------------------------- CLI

def test_cli(tmp_path, capsys):
    from data_prep.__main__ import main

    assert main(["list"]) == 0
    assert "topic-mix" in capsys.readouterr().out
    assert main(["stats", "listops", "--max-len", "128", "--cache-dir", str(tmp_path), "--n-train", "5",
                 "--n-validation", "5", "--n-test", "5", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert set(st) == {"train", "validation", "test"} and st["test"]["n"] == 5
    assert main(["build", "nope", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown task 'nope'") and err.count("\n") == 1
    assert main(["build", "listops", "--max-len", "32", "--cache-dir", str(tmp_path)]) == 2
    assert "at least 64" in capsys.readouterr().err
