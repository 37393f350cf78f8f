"""`listops`: Long Range Arena ListOps (Nangia & Bowman 2018; Tay et al. 2021), generated here.

Generation rules as published for LRA: an expression is a tree; at depth < MAX_DEPTH (10) a node is an operator
with probability OP_P (0.25), otherwise a digit 0-9; an operator takes 2..MAX_ARGS (10) arguments; operators are
MAX, MIN, MED (median, rounded down to an integer) and SM (sum modulo 10). The label is the value (10 classes).
Expressions are written as in LRA without the parenthesis noise: "[MAX 2 9 [MIN 4 7 ] 0 ]".

Length: LRA keeps expressions whose length falls in a window (500-2000 symbols). Here the window is
[max_len/2, max_len] in tokens of the chosen tokenizer (special tokens included), so each length gets its own
examples and nothing is ever truncated. Trees that overshoot the window are abandoned as soon as they do.
"""

from __future__ import annotations

import random

from .corpora import SPLITS, split_rng
from .tokenization import encode_specials

OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
END = "]"
MAX_DEPTH = 10
MAX_ARGS = 10
OP_P = 0.25


class _TooLong(Exception):
    pass


def evaluate(op: str, args: list[int]) -> int:
    """Value of one operator node."""
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[MED":  # median, floored to an integer (LRA: int(np.median(...)), same on digits)
        s, m = sorted(args), len(args) // 2
        return s[m] if len(args) % 2 else (s[m - 1] + s[m]) // 2
    return sum(args) % 10


def _grow(rng, depth: int, out: list[str], cost: dict[str, int], used: list[int], limit: int) -> int:
    """Append one subtree's symbols to `out`, return its value; raise _TooLong past `limit` tokens."""
    # int(random() * k) rather than randrange/choice: generation is draw-bound and this is ~3x cheaper
    draw = rng.random
    if depth < MAX_DEPTH and draw() < OP_P:
        op = OPERATORS[int(draw() * len(OPERATORS))]
        out.append(op)
        used[0] += cost[op]
        args = [_grow(rng, depth + 1, out, cost, used, limit) for _ in range(2 + int(draw() * (MAX_ARGS - 1)))]
        out.append(END)
        used[0] += cost[END]
        value = evaluate(op, args)
    else:
        value = int(draw() * 10)
        out.append(str(value))
        used[0] += cost[str(value)]
    if used[0] > limit:
        raise _TooLong
    return value


def sample(rng: random.Random, lo: int, hi: int, cost: dict[str, int], max_tries: int = 200_000):
    """One (expression, value) whose token length is in [lo, hi] (rejection sampling, as LRA did)."""
    for _ in range(max_tries):
        out, used = [], [0]
        try:
            value = _grow(rng, 1, out, cost, used, hi)
        except _TooLong:
            continue
        if used[0] >= lo:
            return " ".join(out), value
    raise RuntimeError(f"no ListOps expression of {lo}-{hi} tokens in {max_tries} tries")


def build(cfg, tok) -> dict[str, list[dict]]:
    """Raw records per split: text (the expression) and label (its value)."""
    from .registry import get_task

    sizes = cfg.sizes(get_task("listops").default_sizes)
    sp = encode_specials(tok)
    hi = cfg.max_len - len(sp["prefix"]) - len(sp["suffix"])
    # token cost of each symbol; symbols are whitespace-separated, so costs add up (a test checks it)
    cost = {s: len(tok(s, add_special_tokens=False)["input_ids"]) for s in (*OPERATORS, END, *map(str, range(10)))}
    out = {}
    for split in SPLITS:
        # Python's Random: scalar draws are ~10x cheaper than numpy's, and generation is draw-bound
        rng = random.Random(int(split_rng(cfg.seed, split, "listops").integers(2**63)))
        out[split] = []
        for n in range(sizes[split]):
            text, value = sample(rng, hi // 2, hi, cost)
            out[split].append({"doc_id": f"listops/{split}/{n:05d}", "text": text, "label": value})
    return out
