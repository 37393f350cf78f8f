"""The prepared GPU check (benchmarks/gpu_check.py) on a machine without a GPU: its dry run lists the four parts
within the 8-minute budget, its DDP part's own process runs over gloo on the CPU, and a real run refuses in one
line."""

import json
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = [sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py")]
PARTS = ["sweep-4096", "cuda-memory", "frontier-40GiB", "ddp-nccl"]


def test_dry_run_lists_the_four_parts_and_their_budgets(tmp_path):
    done = subprocess.run([*SCRIPT, "--dry-run", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listed = re.findall(r"^- (\S+) \((\d+) s\): ", done.stdout, flags=re.M)
    assert [name for name, _ in listed] == PARTS
    total = int(re.search(r"(\d+) s of budget \(at most 480 s\)", done.stdout).group(1))
    assert total == sum(int(s) for _, s in listed) <= 480
    # the sweep part runs sdpa (and flash_attention_2 only where flash-attn is installed) at 4096 for 3 steps
    assert "--lengths 4096 --max-steps 3" in done.stdout and "--attn sdpa" in done.stdout
    assert done.stdout.count("--frontier --mem-budget 40GiB") == 2 and "modernbert-base" in done.stdout
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_the_ddp_part_trains_two_steps_under_lightning_ddp(tmp_path):
    done = subprocess.run([*SCRIPT, "--ddp-smoke", "cpu"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary == {"strategy": "DDPStrategy", "backend": "gloo", "steps": 2}


def test_a_real_run_without_a_gpu_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([*SCRIPT, "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("error: no CUDA GPU") and "--dry-run" in done.stderr
