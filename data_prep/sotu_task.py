"""`sotu`: party of the speaker (Democratic vs Republican) from a State of the Union address.

Only the 185 addresses by Democratic or Republican presidents are used (other parties are too few to learn).
Each address is one example, split by document, stratified by party, 70 / 10 / 20 %, so the split sizes are
fixed by the corpus (~129 / 18 / 38); n_train / n_validation / n_test, when given, cap them (seeded subsample).
Addresses are long (median ~8k tokens), so every length sees a prefix (or suffix, with truncation='tail').
"""

from __future__ import annotations

from .corpora import SPLITS, sotu_speeches, split_rng

LABELS = ("Democratic", "Republican")
SHARES = (0.7, 0.1, 0.2)


def build(cfg, tok) -> dict[str, list[dict]]:
    df = sotu_speeches()
    df = df[df["party"].isin(LABELS)].reset_index(drop=True)
    out = {s: [] for s in SPLITS}
    caps = dict(zip(SPLITS, (cfg.n_train, cfg.n_validation, cfg.n_test)))
    for label, party in enumerate(LABELS):
        rows = df[df["party"] == party]
        order = split_rng(cfg.seed, "all", f"sotu-{party}").permutation(len(rows))
        n_tr, n_va = round(len(rows) * SHARES[0]), round(len(rows) * SHARES[1])
        parts = {"train": order[:n_tr], "validation": order[n_tr:n_tr + n_va], "test": order[n_tr + n_va:]}
        for split, idx in parts.items():
            for i in idx:
                r = rows.iloc[int(i)]
                out[split].append({"doc_id": r["doc_id"], "text": r["text"], "label": label})
    for split in SPLITS:
        recs = sorted(out[split], key=lambda r: r["doc_id"])
        if caps[split] is not None and caps[split] < len(recs):
            keep = sorted(split_rng(cfg.seed, split, "sotu-cap").permutation(len(recs))[: caps[split]])
            recs = [recs[i] for i in keep]
        out[split] = recs
    return out
