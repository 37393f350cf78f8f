"""The prepared GPU check: one script, no network, no decision left to the machine, at most 8 minutes on one
H100 or H200. It writes `gpu_check.json` and `gpu_check.md` into `--out`.

Parts, each with its own time budget (a part past it is stopped, recorded as `timeout`, and the next one runs):
1. sweep-4096: the sweep's default methods and controls at L = 4096 with `--max-steps 3`, one seed, once with
   flash_attention_2 (where flash-attn is installed) and once with sdpa;
2. cuda-memory: for each cell of the sdpa sweep, the counted parts of the training peak (weights, gradients, AdamW
   state, saved activations) against torch.cuda.max_memory_allocated, within 10 %;
3. frontier-40GiB: `--frontier --mem-budget 40GiB` on a ~0.5B Llama and a ModernBERT-base config (random weights,
   built from configs and saved with the offline tokenizer);
4. ddp-nccl: two optimizer steps of a tiny SSMLoRA model under Lightning's DDP strategy over NCCL on one GPU.

    python benchmarks/gpu_check.py --dry-run            # any machine: the parts, their budgets and commands
    python benchmarks/gpu_check.py --out gpu_check      # on the GPU
    python benchmarks/gpu_check.py --lean               # the older lean loop: peak memory, tokens/s, MFU, 1K-16K

`--lean` is a training loop without Lightning on a ~0.5B Llama-style classifier (bf16 weights and autocast,
adapters in float32, AdamW, 16K tokens per step, 2 warm-up and `--steps` timed steps): peak_GiB is
torch.cuda.max_memory_allocated over the cell, MFU the counted FLOPs of one step over step time and the device's
dense bf16 peak.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig

from ssmlora import AdapterConfig, inject_adapters
from ssmlora.lab.profilers import flop_counter, peak_flops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from docs_section import write_docs_section  # noqa: E402

TOKENS_PER_STEP = 16384



ROOT = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(ROOT / "experiments" / "run.py")]
TOTAL_BUDGET_S = 480  # one H100 or H200, all parts together
MEMORY_TOLERANCE = 0.10  # counted decomposition against torch.cuda.max_memory_allocated


@dataclass(frozen=True)
class Part:
    """One step of the check: a name, what it shows, its time budget and the commands it runs in order."""

    name: str
    shows: str
    budget_s: int
    commands: list[list[str]] = field(default_factory=list)


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def parts(out: Path, flash: bool) -> list[Part]:
    """The four parts, in the order they run; `out` holds their sweep folders and saved model configs."""
    sweep = ["--lengths", "4096", "--max-steps", "3", "--seeds", "0", "--accelerator", "gpu", "--devices", "1",
             "--out", str(out / "sweeps")]
    kernels = (["flash_attention_2"] if flash else []) + ["sdpa"]
    frontier = ["--frontier", "--mem-budget", "40GiB", "--methods", "lora,ssmlora", "--accelerator", "gpu",
                "--attn", "sdpa", "--out", str(out / "frontier")]
    return [
        Part("sweep-4096", "the default sweep's methods and controls at L = 4096, 3 steps each, "
             + " and ".join(kernels) + ("" if flash else " (flash-attn is not installed)"), 200,
             [[*RUN, *sweep, "--attn", k, "--name", f"sweep-{k}"] for k in kernels]),
        Part("cuda-memory", "per cell of the sdpa sweep: the counted parts (weights, gradients, AdamW state, saved "
             f"activations) against torch.cuda.max_memory_allocated, within {MEMORY_TOLERANCE:.0%}", 10, []),
        Part("frontier-40GiB", "the longest L per method that trains in 40 GiB, on a ~0.5B Llama and a "
             "ModernBERT-base config, random weights", 200,
             [[*RUN, *frontier, "--model", str(out / "models" / name), "--name", name]
              for name in ("llama-0.5b", "modernbert-base")]),
        Part("ddp-nccl", "Lightning's DDP strategy over NCCL on one GPU: 2 optimizer steps of a tiny SSMLoRA BERT",
             60, [[sys.executable, str(Path(__file__).resolve()), "--ddp-smoke"]]),
    ]


def save_models(folder: Path) -> None:
    """The frontier's two backbones from configs (random bf16 weights), each saved with the offline tokenizer."""
    from transformers import ModernBertConfig

    from ssmlora.lab.backbone import save_with_default_tokenizer

    configs = {
        "llama-0.5b": LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=5504, num_hidden_layers=24,
                                  num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=131072,
                                  pad_token_id=0),
        "modernbert-base": ModernBertConfig(pad_token_id=0, bos_token_id=101, cls_token_id=101, eos_token_id=102,
                                            sep_token_id=102),
    }
    for name, config in configs.items():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.bfloat16)
        save_with_default_tokenizer(model, folder / name)


def memory_rows(out: Path) -> list[dict]:
    """The cuda-memory part: each sdpa sweep cell's measured training peak against the sum of its counted parts."""
    from results import read_results

    rows = []
    for path in sorted((out / "sweeps").glob("sweep-sdpa/results.csv")):
        for r in read_results(path):
            if r.get("status") != "ok" or not r.get("train_peak_mb"):
                continue
            peak = float(r["train_peak_mb"])
            counted = peak - float(r["unexplained_mb"] or 0.0)
            rows.append({"variant": r["variant"], "max_len": int(r["max_len"]), "train_peak_mb": peak,
                         "counted_mb": counted, "ratio": counted / peak,
                         "ok": abs(1 - counted / peak) <= MEMORY_TOLERANCE})
    return rows


def run_part(part: Part, log) -> dict:
    """Run a part's commands one after another inside its budget; record exit codes, time and the output tail."""
    start, codes, tail = time.perf_counter(), [], ""
    for command in part.commands:
        left = part.budget_s - (time.perf_counter() - start)
        if left <= 0:
            codes.append("timeout")
            continue
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=left)
            codes.append(done.returncode)
            tail = (done.stdout + done.stderr)[-2000:]
        except subprocess.TimeoutExpired as err:
            codes.append("timeout")
            tail = str(err.stdout or "")[-2000:]
        log(f"[{part.name}] {' '.join(command[2:8])} ...: {codes[-1]}")
    wall = time.perf_counter() - start
    status = "ok" if all(c == 0 for c in codes) else ("timeout" if "timeout" in codes else "failed")
    return {"part": part.name, "status": status, "exit_codes": codes, "wall_s": round(wall, 1),
            "budget_s": part.budget_s, "output_tail": tail}


def markdown(results: list[dict], device: str) -> str:
    lines = [f"GPU check on {device}", "", "| part | status | wall s | budget s | result |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['part']} | {r['status']} | {r['wall_s']} | {r['budget_s']} | {r.get('summary', '')} |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, results: list[dict], device: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps({"device": device, "parts": results}, indent=2))
    (out / "gpu_check.md").write_text(markdown(results, device))
    return out / "gpu_check.json", out / "gpu_check.md"


def half_b_llama(positions: int, attn: str):
    """~0.51B parameters: 24 layers, hidden 1024, MLP 5504, 16 heads (8 KV), vocab 32000."""
    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=5504, num_hidden_layers=24,
                         num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=positions,
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


def ddp_smoke(accelerator: str = "gpu") -> int:
    """The ddp-nccl part's own process: two optimizer steps of a tiny SSMLoRA BERT under Lightning's DDP strategy
    on one device, over NCCL on a GPU (gloo with `accelerator="cpu"`, which is how the tests run this path). The
    sweep runs one device without DDP, so this is where the single-GPU NCCL path runs."""
    backend_wanted = "nccl" if accelerator == "gpu" else "gloo"
    import lightning as L
    from transformers import AutoModelForSequenceClassification, BertConfig

    from ssmlora.lab.module import AdapterClassifier, OptimConfig

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(BertConfig(
        vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        num_labels=2))
    inject_adapters(model, AdapterConfig(method="ssmlora", r=4))
    ids = torch.randint(3, 1000, (8, 128))
    rows = [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": torch.tensor(n % 2)}
            for n, i in enumerate(ids)]
    loader = torch.utils.data.DataLoader(rows, batch_size=4)
    trainer = L.Trainer(accelerator=accelerator, devices=1, strategy=L.pytorch.strategies.DDPStrategy(
        process_group_backend=backend_wanted), max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, precision="bf16-mixed")
    trainer.fit(AdapterClassifier(model, 2, OptimConfig(), lr=1e-4, max_steps=2), loader)
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
    print(json.dumps({"strategy": type(trainer.strategy).__name__, "backend": backend, "steps": trainer.global_step}))
    return 0 if backend == backend_wanted and trainer.global_step == 2 else 1


def check(out: Path, dry_run: bool) -> int:
    """Run (or, with `dry_run`, list) the prepared parts; write gpu_check.json and gpu_check.md into `out`."""
    flash = flash_attn_installed()
    plan = parts(out, flash)
    total = sum(p.budget_s for p in plan)
    if dry_run:
        print(f"gpu check: {len(plan)} parts, {total} s of budget (at most {TOTAL_BUDGET_S} s); outputs in {out}")
        for p in plan:
            print(f"- {p.name} ({p.budget_s} s): {p.shows}")
            for command in p.commands:
                print(f"    {' '.join(command[1:])}")
        return 0
    if not torch.cuda.is_available():
        print("error: no CUDA GPU: the check needs one (--dry-run lists what it would run)", file=sys.stderr)
        return 2
    device = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, flash-attn {'yes' if flash else 'no'}"
    print(f"device: {device}")
    save_models(out / "models")
    results = []
    for p in plan:
        if p.name == "cuda-memory":
            rows = memory_rows(out)
            ok = bool(rows) and all(r["ok"] for r in rows)
            ratios = ", ".join(f"{r['variant']} {r['ratio']:.3f}" for r in rows)
            results.append({"part": p.name, "status": "ok" if ok else "failed", "wall_s": 0, "budget_s": p.budget_s,
                            "rows": rows, "summary": f"counted / measured: {ratios or 'no sdpa cell'}"})
        else:
            result = run_part(p, print)
            result["summary"] = result["output_tail"].strip().splitlines()[-1][:160] if result["output_tail"] else ""
            results.append(result)
        print(f"{p.name}: {results[-1]['status']} ({results[-1]['wall_s']} s of {p.budget_s}) {results[-1]['summary']}")
    paths = write_outputs(out, results, device)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


def lean(args) -> int:
    """The --lean loop: peak memory, tokens/s and MFU per (attention, length, method) cell."""
    if not torch.cuda.is_available():
        print("error: no CUDA GPU: this check needs one", file=sys.stderr)
        return 2
    attns = ["sdpa"] + (["flash_attention_2"] if flash_attn_installed() else [])
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="list the parts, their budgets and commands; run nothing")
    p.add_argument("--out", default="gpu_check", help="folder of the parts' runs, gpu_check.json and gpu_check.md")
    p.add_argument("--ddp-smoke", nargs="?", const="gpu", choices=["gpu", "cpu"], help=argparse.SUPPRESS)  # the ddp part
    p.add_argument("--lean", action="store_true", help="instead: the lean loop (peak memory, tokens/s, MFU)")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384], help="--lean only")
    p.add_argument("--methods", nargs="+", default=["frozen", "lora", "ssmlora"], help="--lean only")
    p.add_argument("--steps", type=int, default=5, help="--lean only: timed optimizer steps per cell")
    p.add_argument("--budget-s", type=float, default=420, help="--lean only: skip the cells left after this")
    p.add_argument("--json", default=None, help="--lean only: also write every cell as JSON lines here")
    p.add_argument("--write-docs", action="store_true",
                   help="--lean only: also write the result as a table into docs/benchmarks.md (section gpu_check)")
    args = p.parse_args(argv)
    if args.ddp_smoke:
        return ddp_smoke(args.ddp_smoke)
    if args.lean:
        return lean(args)
    return check(Path(args.out).resolve(), args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
