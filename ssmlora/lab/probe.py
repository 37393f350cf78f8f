"""Linear-probe initialisation of the classifier head, before fine-tuning (LP-FT).

LP-FT (Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution",
ICLR 2022, arXiv 2202.10054): fit the new head on the frozen model's features first, then fine-tune adapters
and head together from there. Why the sweep does it by default: a fresh random head and fresh adapters share
one small CPU budget, and at 4096 tokens that budget is a few dozen sequences, too few for the head to find
the classes while the adapters move under it (the default sweep stayed near chance at 4096 without it). The
probe needs only forward passes of the frozen model (~6x cheaper than a training step here), and at init
every adapter leaves the model exactly frozen, so its features are the same for LoRA, SSMLoRA and the
head-only baseline: they are extracted once per (length, seed), cached beside the sweep, and every method
starts from the identical head. The comparison between methods stays fair; the fine-tuning is what differs.

The head's last linear layer is fitted: for BERT/Llama/GPT-2 heads that is the whole head; RoBERTa-style heads
keep their (random) dense layer, and the probe reads the features after it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from results import write_atomically
from ssmlora.arch import family_of, find_head
from ssmlora.inject import reset_ssm_state
from ssmlora.lab.data import BucketBatchSampler, PadCollator
from ssmlora.lora import AdapterLinear


def head_linear(model: nn.Module) -> nn.Linear:
    """The last linear layer of the classification head (the one the probe fits); inside an adapter wrapper
    when the scheme adapts the head (SSMLoRA's default), its frozen-at-init base projection."""
    modules = dict(model.named_modules())
    for path in family_of(model).heads:
        module = modules.get(path)
        module = module.base if isinstance(module, AdapterLinear) else module
        if isinstance(module, nn.Linear):
            return module
    find_head(model, family_of(model))  # raises the error that names the missing head
    raise ValueError(f"the classification head of {type(model).__name__} is not an nn.Linear: cannot fit a probe")


def _autocast(device: torch.device, precision: str):
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def head_features(model: nn.Module, dataset, batch_size: int, precision: str = "32",
                  pad_token_id: int = 0) -> torch.Tensor:
    """Inputs of the head's last linear layer for every row of `dataset`, in row order (float32, N x d).

    Runs the model in eval mode (no dropout) under the cell's precision, in length-sorted, right-padded batches.
    Decoder classifiers (Llama, GPT-2) apply the head at every position and keep the last real token's logits,
    so their features are the head inputs at that token.
    """
    linear = head_linear(model)
    captured: list[torch.Tensor] = []
    order: list[int] = []

    def keep_input(module, args):
        captured.append(args[0].detach().float().cpu())

    handle = linear.register_forward_pre_hook(keep_input)
    was_training = model.training
    device = next(model.parameters()).device
    rows = dataset.select_columns(["input_ids", "label"])
    lengths = [len(ids) for ids in rows["input_ids"]]
    collate = PadCollator(pad_token_id)
    model.eval()
    try:
        for batch_idx in BucketBatchSampler(lengths, batch_size, shuffle=False):
            batch = collate([rows[i] for i in batch_idx])
            mask = batch["attention_mask"].to(device)
            with _autocast(device, precision):
                model(input_ids=batch["input_ids"].to(device), attention_mask=None if bool(mask.all()) else mask)
            if captured[-1].dim() == 3:  # decoder heads score every position and read the last real token
                captured[-1] = captured[-1][torch.arange(len(batch_idx)), batch["attention_mask"].sum(1) - 1]
            order += batch_idx
    finally:
        handle.remove()
        model.train(was_training)
        reset_ssm_state(model)  # 'carry' mode: these forwards must not leave a state behind
    feats = torch.cat(captured)
    out = torch.empty_like(feats)
    out[torch.as_tensor(order)] = feats
    return out


FALLBACK_C = 0.01  # L2 strength when a class has a single example (no stratified CV possible): CV's usual pick here


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_labels: int, seed: int = 0,
                     intercept: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Multinomial logistic regression on standardised features, L2 strength chosen by stratified 5-fold CV
    (scikit-learn's LogisticRegressionCV). Returns the head's (weight K x d, bias K) with the standardisation
    folded in, so the head reads raw features, plus a summary of the fit. `intercept=False` (a head without
    bias, as Llama's `score`): features are scaled but not centred, and the bias returned is zero."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    x = features.double().numpy()
    y = labels.numpy()
    present = np.unique(y)
    if len(present) < 2:
        raise ValueError(f"the linear probe needs examples of at least 2 classes, got label counts "
                         f"{np.bincount(y, minlength=num_labels).tolist()}: raise --probe-examples")
    mean, std = (x.mean(0) if intercept else np.zeros(x.shape[1])), x.std(0) + 1e-6
    z = (x - mean) / std
    folds = int(min(5, np.bincount(y)[present].min()))  # stratified folds need every class in each
    if folds >= 2:
        # log-loss picks C more stably than accuracy on a few hundred examples; C <= 100 keeps the fit finite
        # and converging when a few hundred examples in hundreds of dimensions are separable
        clf = LogisticRegressionCV(Cs=np.logspace(-4, 2, 7).tolist(), scoring="neg_log_loss", max_iter=2000,
                                   cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                   fit_intercept=intercept, random_state=seed, use_legacy_attributes=False)
    else:
        clf = LogisticRegression(C=FALLBACK_C, max_iter=2000, fit_intercept=intercept)
    clf.fit(z, y)
    coef, icpt = clf.coef_, np.broadcast_to(clf.intercept_, (len(clf.coef_),))
    if len(present) == 2:  # sklearn's binary model is one logit difference; a softmax head needs two logits
        coef, icpt = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
    weight = np.zeros((num_labels, x.shape[1]))
    bias = np.full(num_labels, -30.0 if intercept else 0.0)  # a class absent from the probe set: not predicted
    weight[present] = coef / std
    bias[present] = icpt - (coef / std) @ mean
    summary = {"probe_examples": len(y), "probe_C": float(getattr(clf, "C_", FALLBACK_C)),
               "probe_train_acc": float((clf.predict(z) == y).mean())}
    return torch.from_numpy(weight).float(), torch.from_numpy(bias).float(), summary


def _load_cached(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError):
        return None  # missing or corrupt (an interrupted write cannot leave one: the file is renamed in place)
    if not {"features", "labels"} <= tensors.keys():
        return None
    return tensors["features"], tensors["labels"]


def init_head_from_probe(model: nn.Module, train, n_examples: int, seed: int, batch_size: int,
                         precision: str = "32", pad_token_id: int = 0, cache: str | os.PathLike | None = None,
                         write_cache: bool = True) -> dict:
    """Fit the head's last linear layer on frozen features of `n_examples` seeded training rows, in place.

    `cache`: a .safetensors file of those features; read if it holds the same rows' labels, else written
    (atomically) after extraction. Returns the fit's summary plus `probe_s` (seconds spent in this call) and
    `probe_cached` (whether the features came from the cache).
    """
    start = time.perf_counter()
    n = min(n_examples, len(train))
    rows = np.random.default_rng(seed).permutation(len(train))[:n]
    subset = train.select(sorted(rows.tolist()))
    labels = torch.as_tensor(subset["label"], dtype=torch.long)
    cached = _load_cached(Path(cache)) if cache else None
    if cached is not None and torch.equal(cached[1], labels):  # the same rows in the same order
        features = cached[0]
    else:
        cached = None
        features = head_features(model, subset, batch_size, precision, pad_token_id)
        if cache and write_cache:
            _save_atomically(Path(cache), features, labels)
    linear = head_linear(model)
    weight, bias, summary = fit_linear_probe(features, labels, linear.weight.shape[0], seed,
                                             intercept=linear.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight.to(linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.copy_(bias.to(linear.bias.dtype))
    return {**summary, "probe_s": time.perf_counter() - start, "probe_cached": cached is not None}


def probe_predictions(model: nn.Module, test, batch_size: int, precision: str = "32", pad_token_id: int = 0,
                      cache: str | os.PathLike | None = None, write_cache: bool = True) -> list[dict]:
    """The fitted probe head (before any fine-tuning) scored on every row of `test`: per row its label,
    prediction, p_pred and p_true, like the cell's own predictions, so the probe pairs with every method.

    The frozen model's test features are the same for every method and seed at one length (the test documents
    are fixed), so `cache` holds them once per length; only the head, fitted per seed, differs.
    """
    labels = torch.as_tensor(test["label"], dtype=torch.long)
    cached = _load_cached(Path(cache)) if cache else None
    if cached is not None and torch.equal(cached[1], labels):
        features = cached[0]
    else:
        features = head_features(model, test, batch_size, precision, pad_token_id)
        if cache and write_cache:
            _save_atomically(Path(cache), features, labels)
    linear = head_linear(model)
    with torch.no_grad():
        logits = features @ linear.weight.detach().float().cpu().T
        if linear.bias is not None:
            logits += linear.bias.detach().float().cpu()
    probs = torch.softmax(logits, -1)
    return [{"row": i, "label": int(y), "prediction": int(p.argmax()), "p_pred": float(p.max()),
             "p_true": float(p[y])} for i, (y, p) in enumerate(zip(labels, probs))]


def _save_atomically(path: Path, features: torch.Tensor, labels: torch.Tensor) -> None:
    write_atomically(path, lambda tmp: save_file({"features": features.contiguous(), "labels": labels}, str(tmp)))
