"""GPU check on one CUDA device (sized for one H200, < 8 minutes): peak memory, tokens/s and MFU per cell.

A short length sweep, L = 1K 2K 4K 8K 16K tokens, of LoRA vs SSMLoRA vs frozen (head only), on a ~0.5B
Llama-style classifier built from a config (random weights, nothing downloaded), with attention `sdpa` and,
if `flash_attn` imports, `flash_attention_2`.

This is a lean training loop, not the Lightning sweep (30 cells of Trainer start-up would not fit the time
box): bf16 weights, bf16 autocast, adapters in float32 (as ssmlora keeps them), AdamW on the trainable
tensors, a constant 16K tokens per optimizer step (micro-batch = 16384 // L sequences, no padding), 2 warm-up
steps, then `--steps` timed steps (CUDA-synchronised). Per cell:
- peak_GiB: torch.cuda.max_memory_allocated since the cell started (weights, optimizer, activations);
- tok/s: training tokens per second over the timed steps;
- MFU: FLOPs of one step (torch.utils.flop_counter, counted on an untimed step under sdpa, and reused for
  flash_attention_2, whose custom kernel the counter cannot see; the maths is the same) / step time / the
  device's dense bf16 peak (ssmlora.lab.profilers.peak_flops).
A cell that runs out of memory prints "oom" and the check goes on; cells past the time budget are skipped.

    python benchmarks/gpu_check.py                       # the full check
    python benchmarks/gpu_check.py --lengths 1024 --steps 2  # a quick look
    python benchmarks/gpu_check.py --write-docs          # also as a table into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig

from ssmlora import AdapterConfig, inject_adapters
from ssmlora.lab.profilers import flop_counter, peak_flops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from docs_section import write_docs_section  # noqa: E402

TOKENS_PER_STEP = 16384


def half_b_llama(max_len: int, attn: str):
    """~0.51B parameters: 24 layers, hidden 1024, MLP 5504, 16 heads (8 KV), vocab 32000."""
    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=5504, num_hidden_layers=24,
                         num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=max_len,
                         num_labels=2, pad_token_id=0, attention_dropout=0.0)
    with torch.device("cuda"):
        model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attn,
                                                               dtype=torch.bfloat16)
    return model


def one_step(model, opt, ids, labels) -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def run_cell(method: str, length: int, attn: str, steps: int, flops_cache: dict) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = half_b_llama(max(length, 2048), attn)
    inject_adapters(model, AdapterConfig(method=method, r=8, alpha=16.0, dropout=0.0, targets="all"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4)
    batch = max(1, TOKENS_PER_STEP // length)
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(3, 32000, (batch, length), device="cuda", generator=g)
    labels = torch.randint(0, 2, (batch,), device="cuda", generator=g)
    for _ in range(2):  # warm-up: kernels chosen, optimizer state allocated
        one_step(model, opt, ids, labels)
    key = (method, length)
    if attn == "sdpa" and key not in flops_cache:
        with flop_counter() as counter:
            one_step(model, opt, ids, labels)
        flops_cache[key] = float(counter.get_total_flops())
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        one_step(model, opt, ids, labels)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    step = statistics.median(times)
    flops = flops_cache.get(key)
    peak = peak_flops(torch.device("cuda", 0), torch.bfloat16)
    result = {"method": method, "L": length, "attn": attn, "batch": batch, "trainable": trainable,
              "peak_GiB": torch.cuda.max_memory_allocated() / 2**30, "step_s": step,
              "tok_per_s": batch * length / step, "tflops_per_step": flops / 1e12 if flops else None,
              "mfu": flops / step / peak if (flops and peak) else None}
    del model, opt, params
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--methods", nargs="+", default=["frozen", "lora", "ssmlora"])
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per cell")
    p.add_argument("--budget-s", type=float, default=420, help="skip the cells left after this many seconds")
    p.add_argument("--json", default=None, help="also write every cell as JSON lines here")
    p.add_argument("--write-docs", action="store_true",
                   help="also write the result as a table into docs/benchmarks.md (section gpu_check)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: no CUDA GPU: this check needs one", file=sys.stderr)
        return 2
    attns = ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
    if len(attns) == 1:
        print("flash_attn is not importable: sdpa only")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"peak bf16 {peak_flops(torch.device('cuda', 0)) or 0:.3g} FLOP/s")
    start, flops_cache, rows, missing = time.perf_counter(), {}, [], []
    header = f"{'attn':<18}{'method':<9}{'L':>6}{'batch':>6}{'peak_GiB':>10}{'tok/s':>10}{'step_s':>8}{'MFU':>7}"
    print(header)
    for attn in attns:  # sdpa first: it fills the FLOP counts flash_attention_2 reuses
        for length in args.lengths:
            for method in args.methods:
                if time.perf_counter() - start > args.budget_s:
                    print(f"{attn:<18}{method:<9}{length:>6}  skipped (time budget)")
                    missing.append((attn, method, length, "skipped (time budget)"))
                    continue
                try:
                    r = run_cell(method, length, attn, args.steps, flops_cache)
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    print(f"{attn:<18}{method:<9}{length:>6}  oom")
                    missing.append((attn, method, length, "oom"))
                    continue
                except Exception as err:  # noqa: BLE001 - one broken cell must not hide the rest
                    print(f"{attn:<18}{method:<9}{length:>6}  failed: {type(err).__name__}: {str(err)[:120]}")
                    missing.append((attn, method, length, f"failed: {type(err).__name__}"))
                    continue
                rows.append(r)
                mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
                print(f"{attn:<18}{method:<9}{length:>6}{r['batch']:>6}{r['peak_GiB']:>10.2f}"
                      f"{r['tok_per_s']:>10.0f}{r['step_s']:>8.3f}{mfu:>7}", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    if args.write_docs:
        table = ["| attn | method | L | batch | peak GiB | tokens/s | step s | MFU |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
            table.append(f"| {r['attn']} | {r['method']} | {r['L']} | {r['batch']} | {r['peak_GiB']:.2f} | "
                         f"{r['tok_per_s']:.0f} | {r['step_s']:.3f} | {mfu} |")
        table += [f"| {attn} | {method} | {length} | {note} | | | | |" for attn, method, length, note in missing]
        machine = (f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
                   f"attention {' and '.join(attns)}, total {time.perf_counter() - start:.0f} s")
        print(f"wrote {write_docs_section('gpu_check', chr(10).join(table), machine)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
