"""Injection schemes, exact parameter counts, save/load round trips, the params CLI and bad input."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel

from ssmlora import AdapterConfig, count_parameters, inject_adapters, load_adapters, save_adapters
from tiny_models import FFN, HIDDEN, LABELS, LAYERS, tiny_batch, tiny_config, tiny_model

R = 4
H, F, N = HIDDEN, FFN, LAYERS


def lora(i, o):
    return R * (i + o)


def ssm(i, o):
    return R * (i + o) + 2 * R * R


HEAD = ssm(H, LABELS)  # the sparse scheme's adapter on the classifier head
# Hand arithmetic of the insertion schemes (docs/adapters.md) on the tiny configs (H=32, FFN=64, 4 layers, 3 labels, r=4).
EXPECTED = {
    ("llama", "lora", "all"): N * (4 * lora(H, H) + 3 * lora(H, F)),
    ("llama", "ssmlora", "all"): N * (ssm(H, H) + ssm(H, H) + 3 * ssm(H, F)) + HEAD,
    ("llama", "lora", "qv"): N * 2 * lora(H, H),
    ("llama", "ssmlora", "qv"): N * ssm(H, H),
    ("bert", "lora", "all"): N * (4 * lora(H, H) + 2 * lora(H, F)),
    ("bert", "ssmlora", "all"): N * (2 * ssm(H, H) + 2 * ssm(H, F)) + HEAD,
    ("bert", "lora", "qv"): N * 2 * lora(H, H),
    ("bert", "ssmlora", "qv"): N * ssm(H, H),
    # GPT-2: fused c_attn (in=H, out=3H) counts as q, so the sparse scheme puts it on even layers only
    ("gpt2", "lora", "all"): N * (lora(H, 3 * H) + lora(H, H) + 2 * lora(H, F)),
    ("gpt2", "ssmlora", "all"): (N // 2) * ssm(H, 3 * H) + N * (ssm(H, H) + 2 * ssm(H, F)) + HEAD,
    ("gpt2", "lora", "qv"): N * lora(H, 3 * H),
    ("gpt2", "ssmlora", "qv"): (N // 2) * ssm(H, 3 * H),
}
HEAD_PARAMS = {"llama": H * LABELS, "bert": H * LABELS + LABELS, "gpt2": H * LABELS}


@pytest.mark.parametrize("family, method, targets", sorted(EXPECTED))
def test_parameter_counts_follow_the_schemes(family, method, targets):
    model = inject_adapters(tiny_model(family), AdapterConfig(method=method, r=R, targets=targets))
    counts = count_parameters(model)
    assert counts["adapter_params"] == EXPECTED[family, method, targets]
    head_adapted = method == "ssmlora" and targets == "all"  # an adapted head projection is frozen
    assert counts["head_params"] == (0 if head_adapted else HEAD_PARAMS[family])
    assert counts["trainable_params"] == counts["adapter_params"] + counts["head_params"]
    base_total = sum(p.numel() for p in tiny_model(family).parameters())
    assert counts["total_params"] == base_total + counts["adapter_params"]


def test_frozen_method_trains_only_the_head():
    model = inject_adapters(tiny_model("bert"), AdapterConfig(method="frozen"))
    counts = count_parameters(model)
    assert counts["adapter_params"] == 0 and counts["trainable_params"] == HEAD_PARAMS["bert"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}


def test_explicit_targets_and_layers():
    model = inject_adapters(tiny_model("llama"), AdapterConfig(method="lora", r=R, targets=["q_proj", "ffn-out"], layers=[1, 3]))
    assert [s.name for s in model.adapter_sites] == [
        "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj",
        "model.layers.3.self_attn.q_proj", "model.layers.3.mlp.down_proj",
    ]
    assert count_parameters(model)["adapter_params"] == 2 * (lora(H, H) + lora(F, H))


def test_head_can_stay_frozen():
    model = inject_adapters(tiny_model("llama"), AdapterConfig(method="ssmlora", r=R, train_head=False))
    counts = count_parameters(model)
    assert counts["head_params"] == 0 and counts["adapter_params"] == EXPECTED["llama", "ssmlora", "all"]


@pytest.mark.parametrize("method", ["lora", "ssmlora"])
def test_save_load_round_trip(tmp_path, method):
    model = inject_adapters(tiny_model("bert"), AdapterConfig(method=method, r=R))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    save_adapters(model, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["adapter"]["r"] == R and saved["adapter"]["method"] == method
    ids = tiny_batch()
    fresh = tiny_model("bert", seed=0)
    with torch.no_grad():  # a new head is random: the checkpoint must carry it, frozen or not
        fresh.classifier.weight.normal_(0, 1.0)
    loaded = load_adapters(fresh, tmp_path)
    assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    # only adapter weights and the (new) classifier head are stored, nothing of the pretrained backbone
    from safetensors.torch import load_file

    stored = load_file(tmp_path / "adapter_model.safetensors")
    head = {n for n, _ in model.named_parameters() if n.startswith("classifier.")}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(stored) == trainable | head


def test_load_rejects_another_rank(tmp_path):
    save_adapters(inject_adapters(tiny_model("bert"), AdapterConfig(method="lora", r=R)), tmp_path)
    other = inject_adapters(tiny_model("bert"), AdapterConfig(method="lora", r=2 * R))
    with pytest.raises(ValueError, match=r"r: saved 4 vs model 8"):
        load_adapters(other, tmp_path)


def test_load_rejects_another_model(tmp_path):
    save_adapters(inject_adapters(tiny_model("bert"), AdapterConfig(method="lora", r=R)), tmp_path)
    with pytest.raises(ValueError, match=r"trained on another model \(num_hidden_layers: saved 4 vs model 2"):
        load_adapters(tiny_model("bert", num_hidden_layers=2), tmp_path)
    with pytest.raises(ValueError, match="model_type: saved 'bert' vs model 'llama'"):
        load_adapters(tiny_model("llama"), tmp_path)


def test_load_rejects_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an adapter checkpoint"):
        load_adapters(tiny_model("bert"), tmp_path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="dora"), "unknown method 'dora': choose one of lora, ssmlora, frozen"),
        (dict(ssm_mode="time"), "ssm_mode = 'time' is not allowed: choose one of depth, carry, scan"),
        (dict(scan_direction="up"), "scan_direction = 'up' is not allowed: choose one of auto, causal, bidirectional"),
        (dict(targets="qkv"), "targets = 'qkv' is not allowed"),
        (dict(r=0), "r = 0 is not allowed: must be >= 1"),
        (dict(r=-2), "r = -2 is not allowed: must be >= 1"),
        (dict(r=2.5), "r = 2.5 is not allowed: must be a whole number"),
        (dict(alpha=-1), "alpha = -1 is not allowed: must be > 0"),
        (dict(dropout=1.0), "dropout = 1.0 is not allowed: must be >= 0 and < 1"),
        (dict(scale="sqrt"), "scale = 'sqrt' is not allowed: choose one of alpha/r, alpha"),
        (dict(layers=[]), "layers = \\[\\] is not allowed: an empty list adapts nothing"),
    ],
)
def test_bad_config_is_a_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdapterConfig(**kwargs)


def test_bad_targets_layers_and_models():
    with pytest.raises(ValueError, match=r"targets \['wq'\] match nothing in 'llama'.*q_proj"):
        inject_adapters(tiny_model("llama"), AdapterConfig(targets=["wq"]))
    with pytest.raises(ValueError, match=r"layer indices \[7\] out of range: .* has layers 0..3"):
        inject_adapters(tiny_model("llama"), AdapterConfig(layers=[0, 7]))
    with pytest.raises(ValueError, match="adapts nothing"):  # k does not exist in GPT-2's fused scheme
        inject_adapters(tiny_model("gpt2"), AdapterConfig(targets=["k"]))
    with pytest.raises(ValueError, match="has no classification head.*AutoModelForSequenceClassification"):
        inject_adapters(AutoModel.from_config(tiny_config("bert")), AdapterConfig())
    model = tiny_model("bert")
    model.config.model_type = "t5"
    with pytest.raises(ValueError, match=r"unsupported architecture 't5'.*attention.self.query"):
        inject_adapters(model, AdapterConfig())
    model = inject_adapters(tiny_model("bert"), AdapterConfig())
    with pytest.raises(ValueError, match="already has adapters"):
        inject_adapters(model, AdapterConfig())


def test_params_cli_reads_only_a_config(tmp_path):
    tiny_config("llama", num_labels=2).save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    out = subprocess.run(
        [sys.executable, "-m", "ssmlora.params", "--model", str(tmp_path), "--r", str(R), "--num-labels", "3"],
        capture_output=True, text=True, check=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["method"] for r in rows] == ["lora", "ssmlora", "frozen"]
    assert rows[0]["adapter_params"] == EXPECTED["llama", "lora", "all"]
    assert rows[1]["adapter_params"] == EXPECTED["llama", "ssmlora", "all"]
    assert rows[2]["trainable_params"] == HEAD_PARAMS["llama"]


def test_params_cli_bad_model_is_one_clear_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ssmlora.params", "--model", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith("error: no such model folder") and out.stderr.count("\n") == 1
    assert "Traceback" not in out.stderr
