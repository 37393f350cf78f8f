"""Training-step cost of the adapters, side by side, on a small Llama-style model on the CPU.

For each length L it prints the median step time and the peak memory of one training step (forward, backward,
AdamW) for: the frozen base with a trainable head, our LoRA, PEFT's LoRA (same targets, rank, dropout) and
our SSMLoRA, then the ratios SSMLoRA/LoRA, LoRA/PEFT and LoRA/frozen.

- Time: all four models live in one process per L and their steps are interleaved round by round (the order
  rotates), so drift in machine load hits every method alike. Warm-up steps are excluded.
- Memory: each (method, L) runs in a fresh process. After one warm-up step (optimizer state allocated) the
  RSS high-water mark is reset; the figure is the rise of peak RSS over the RSS before the measured steps,
  i.e. activations and gradients of one step (weights and optimizer state excluded, since they are equal up to
  the adapters' own size). glibc runs with a fixed mmap threshold so that freed tensors leave RSS. The
  whole-process peak is printed beside it.

    python benchmarks/adapter_overhead.py                 # L = 512 1024 2048 4096
    python benchmarks/adapter_overhead.py --lengths 512 --rounds 3
    python benchmarks/adapter_overhead.py --rounds 5 --warmup 1 --write-docs   # also into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig

from ssmlora import AdapterConfig, inject_adapters
from ssmlora.lab.profilers import _vm_hwm_mb, reset_cpu_peak

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from docs_section import machine_line, write_docs_section  # noqa: E402

METHODS = ("frozen", "lora", "peft-lora", "ssmlora")
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R, ALPHA, DROPOUT = 8, 16.0, 0.1


def small_llama(length: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=2048, hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=8, max_position_embeddings=max(length, 4096), num_labels=2, pad_token_id=0,
        attention_dropout=0.0,
    )


def build(method: str, length: int):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(small_llama(length), attn_implementation="sdpa")
    if method == "peft-lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=R, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=LLAMA_TARGETS, modules_to_save=["score"],
        ))
    else:
        inject_adapters(model, AdapterConfig(method=method, r=R, alpha=ALPHA, dropout=DROPOUT))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, optimizer


def train_step(model, optimizer, ids, labels) -> None:
    model(input_ids=ids, labels=labels).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def batch(length: int):
    g = torch.Generator().manual_seed(length)
    return torch.randint(1, 2048, (1, length), generator=g), torch.tensor([1])


def time_length(length: int, rounds: int, warmup: int) -> dict[str, float]:
    """Median step seconds per method, steps interleaved across methods."""
    ids, labels = batch(length)
    runs = {m: build(m, length) for m in METHODS}
    for model, opt in runs.values():
        for _ in range(warmup):
            train_step(model, opt, ids, labels)
    times = {m: [] for m in METHODS}
    for i in range(rounds):
        order = METHODS[i % len(METHODS):] + METHODS[: i % len(METHODS)]
        for method in order:
            start = time.perf_counter()
            train_step(*runs[method], ids, labels)
            times[method].append(time.perf_counter() - start)
    return {m: statistics.median(t) for m, t in times.items()}


def memory_cell(method: str, length: int) -> dict[str, float]:
    """Runs in its own process: step memory (MiB) above the pre-step RSS, and the process peak."""
    import gc

    import psutil

    ids, labels = batch(length)
    model, opt = build(method, length)
    train_step(model, opt, ids, labels)  # allocates the optimizer state
    gc.collect()
    rss_before = psutil.Process().memory_info().rss / 2**20
    if not reset_cpu_peak():
        raise SystemExit("cannot reset the RSS high-water mark (/proc/self/clear_refs): Linux needed")
    for _ in range(2):
        train_step(model, opt, ids, labels)
    peak = _vm_hwm_mb()
    return {"step_mb": peak - rss_before, "process_peak_mb": peak}


def measure_memory(method: str, length: int) -> dict[str, float]:
    # A fixed mmap threshold makes glibc hand every large tensor back to the OS when it is freed, so RSS
    # follows the live tensors instead of the allocator's cache from earlier steps.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, __file__, "--memory-cell", method, str(length)],
        capture_output=True, text=True, check=True, env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per method and length")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method and length")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write-docs", action="store_true",
                        help="also write the result into docs/benchmarks.md (section adapter_overhead)")
    parser.add_argument("--memory-cell", nargs=2, metavar=("METHOD", "L"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_cell:
        print(json.dumps(memory_cell(args.memory_cell[0], int(args.memory_cell[1]))))
        return 0

    lines: list[str] = []

    def emit(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    emit(f"torch {torch.__version__}, {args.threads} threads, small Llama (4 layers, hidden 512), batch 1, "
         f"r={R}, fp32, sdpa; median of {args.rounds} interleaved steps after {args.warmup} warm-up")
    header = ("L", "method", "step s", "step MiB", "proc MiB")
    emit("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    summary = []
    for length in args.lengths:
        seconds = time_length(length, args.rounds, args.warmup)
        memory = {m: measure_memory(m, length) for m in METHODS}
        for m in METHODS:
            emit(f"| {length} | {m} | {seconds[m]:.3f} | {memory[m]['step_mb']:.0f} | {memory[m]['process_peak_mb']:.0f} |")
        summary.append((length, seconds, memory))
    emit("\nRatios (time = median step time; memory = step MiB):\n")
    emit("| L | SSMLoRA/LoRA time | SSMLoRA/LoRA mem | LoRA/PEFT time | LoRA/PEFT mem | LoRA/frozen time | LoRA/frozen mem |")
    emit("|---|---|---|---|---|---|---|")
    for length, s, mem in summary:
        ratio = lambda a, b, d: d[a] / d[b]  # noqa: E731
        step = {m: mem[m]["step_mb"] for m in METHODS}
        emit(f"| {length} | {ratio('ssmlora', 'lora', s):.3f} | {ratio('ssmlora', 'lora', step):.3f} | "
             f"{ratio('lora', 'peft-lora', s):.3f} | {ratio('lora', 'peft-lora', step):.3f} | "
             f"{ratio('lora', 'frozen', s):.3f} | {ratio('lora', 'frozen', step):.3f} |")
    length, s, mem = summary[-1]
    checks = [
        ("SSMLoRA/LoRA time <= 1.10", s["ssmlora"] / s["lora"] <= 1.10),
        ("SSMLoRA/LoRA memory <= 1.05", mem["ssmlora"]["step_mb"] / mem["lora"]["step_mb"] <= 1.05),
        ("LoRA/PEFT time <= 1.00", s["lora"] / s["peft-lora"] <= 1.00),
    ]
    emit(f"\nTargets at L={length}: " + "; ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in checks))
    if args.write_docs:
        print(f"wrote {write_docs_section('adapter_overhead', chr(10).join(lines), machine_line())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
