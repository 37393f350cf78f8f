"""Linear-probe head init (LP-FT): features, the fit folded into the head, the per-length cache, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmlora import AdapterConfig, inject_adapters
from ssmlora.lab.backbone import load_backbone, save_tiny_backbone
from ssmlora.lab.probe import fit_linear_probe, head_features, head_linear, init_head_from_probe
from test_lightning import fake_task
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return save_tiny_backbone(tmp_path_factory.mktemp("bert"), "bert", max_positions=64)


def adapted(path, method="lora", mode="depth"):
    model, _ = load_backbone(str(path), num_labels=3, reach=64, pooling="mean")
    inject_adapters(model, AdapterConfig(method=method, ssm_mode=mode))
    return model


def blobs(n=90, d=6, k=3, seed=0, noise=0.3):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.normal(size=(n, d)) * noise + 5.0  # far from the origin: the fold must undo the centring
    x[np.arange(n), y] += 2.0
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def test_fit_folds_standardisation_into_the_head():
    from sklearn.linear_model import LogisticRegression

    x, y = blobs(n=300, noise=1.0)  # overlapping classes: a well-conditioned optimum to compare with
    w, b, summary = fit_linear_probe(x, y, 3)
    logits = x @ w.T + b
    assert (logits.argmax(1) == y).float().mean() > 0.7
    # the folded head is the CV-chosen logistic regression on standardised features, read on raw features
    mean, std = x.double().mean(0), x.double().std(0, unbiased=False) + 1e-6
    ref = LogisticRegression(C=summary["probe_C"], max_iter=2000).fit(((x - mean) / std).numpy(), y.numpy())
    expected = ref.decision_function(((x - mean) / std).numpy())
    # equal up to the solvers' tolerance (tol=1e-4 on the gradient): the fold itself is exact algebra
    torch.testing.assert_close(logits.double(), torch.from_numpy(expected), atol=2e-2, rtol=0)
    assert summary["probe_examples"] == 300 and summary["probe_train_acc"] > 0.7


def test_binary_and_absent_classes_map_to_a_k_way_head():
    x, y = blobs(k=2)
    w, b, _ = fit_linear_probe(x, y, 4)  # a 4-way head; classes 2 and 3 never seen by the probe
    logits = x @ w.T + b
    assert (logits.argmax(1) == y).float().mean() > 0.95
    assert w.shape == (4, 6) and torch.all(w[2:] == 0)
    x0, y0 = blobs(k=2)
    w0, b0, _ = fit_linear_probe(x0, y0, 2, intercept=False)  # a head without bias (Llama's score)
    assert torch.all(b0 == 0) and w0.shape == (2, 6)


def test_one_class_is_a_clear_error_and_singletons_still_fit():
    with pytest.raises(ValueError, match="probe-examples"):
        fit_linear_probe(torch.randn(3, 4), torch.tensor([0, 0, 0]), 2)
    x, y = blobs(n=9)
    y[[0, 3]] = 1  # class 0 keeps a single example: no stratified CV possible, a fixed C instead
    w, b, summary = fit_linear_probe(x, y, 3)
    assert summary["probe_C"] == 0.01 and w.shape == (3, 6) and torch.isfinite(b).all()


@pytest.mark.parametrize("method,mode", [("lora", "depth"), ("ssmlora", "carry")])
def test_features_are_the_head_input_in_row_order(tiny_bert, method, mode):
    model = adapted(tiny_bert, method, mode)
    data = fake_task(64)["train"].select(range(10))  # varied lengths: sorted batches, padded
    feats = head_features(model, data, batch_size=3)
    model.eval()
    with torch.no_grad():
        for i in (0, 4, 9):
            ids = torch.tensor([data[i]["input_ids"]])
            hidden = model.bert(input_ids=ids).last_hidden_state
            torch.testing.assert_close(feats[i], hidden.mean(1)[0], atol=1e-5, rtol=1e-5)
    if mode == "carry":  # the probe's forwards leave no carried state behind
        assert all(t.abs().sum() == 0 for _, t in model.named_buffers() if "ssm_state" in _)


def test_init_writes_the_head_caches_features_and_keeps_adapters(tiny_bert, tmp_path):
    data = fake_task(64, sizes=(60, 4, 4))["train"]
    model = adapted(tiny_bert)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cache = tmp_path / "probe" / "L64-s0.safetensors"
    first = init_head_from_probe(model, data, 40, seed=0, batch_size=8, cache=cache)
    assert cache.exists() and not first["probe_cached"] and first["probe_examples"] == 40
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"classifier.weight", "classifier.bias"}  # only the head's linear layer moves

    other = adapted(tiny_bert, "ssmlora")  # another method at the same length and seed: same head
    second = init_head_from_probe(other, data, 40, seed=0, batch_size=8, cache=cache)
    assert second["probe_cached"]
    assert torch.equal(head_linear(other).weight, head_linear(model).weight)

    cache.write_bytes(b"not a safetensors file")  # a corrupt cache is recomputed, not trusted
    third = init_head_from_probe(adapted(tiny_bert), data, 40, seed=0, batch_size=8, cache=cache)
    assert not third["probe_cached"]
    resized = init_head_from_probe(adapted(tiny_bert), data, 30, seed=0, batch_size=8, cache=cache)
    assert not resized["probe_cached"] and resized["probe_examples"] == 30


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # random tiny model
def test_probe_head_on_a_llama_without_bias():
    model = tiny_model("llama")
    inject_adapters(model, AdapterConfig(method="lora"))
    data = fake_task(32, sizes=(30, 2, 2), n_labels=3)["train"]
    data = data.map(lambda r: {"input_ids": [min(t, 127) for t in r["input_ids"]]})  # tiny vocabulary
    summary = init_head_from_probe(model, data, 30, seed=0, batch_size=4)
    assert head_linear(model).bias is None and summary["probe_examples"] == 30
    # the features are the score's input at the last real token, where the model reads its logits
    feats = head_features(model, data.select(range(5)), batch_size=2)
    model.eval()
    with torch.no_grad():
        for i in range(5):
            logits = model(input_ids=torch.tensor([data[i]["input_ids"]])).logits[0]
            torch.testing.assert_close(logits, feats[i] @ head_linear(model).weight.T, atol=1e-5, rtol=1e-5)
