"""The LightningModule: fine-tune a `*ForSequenceClassification` backbone through its adapters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import lightning as L
import torch
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from ssmlora.inject import reset_ssm_state, trainable_groups

SCHEDULES = ("cosine", "linear", "constant")
HEAD_INITS = ("probe", "random")


@dataclass
class OptimConfig:
    """How a cell trains: optimizer, schedule, budget and the head's start (LP-FT or random)."""

    lr: dict[str, float] = field(default_factory=dict, metadata={
        "help": "AdamW peak learning rate of the adapter matrices per method: METHOD=VALUE,... or one value for "
                "every method; METHOD:VARIANT=VALUE (ssmlora:scan=1e-4) overrides METHOD's value for that "
                "variant; a method not named uses its registry default (lora 5e-4, ssmlora 5e-5)", "gt": 0})
    head_lr: float = field(default=5e-4, metadata={"help": "peak learning rate of the classifier head", "gt": 0})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay", "ge": 0})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient clipping by global norm", "gt": 0})
    warmup_frac: float = field(default=0.1, metadata={"help": "share of the optimizer steps spent in linear "
                                                              "warm-up", "ge": 0, "le": 1})
    schedule: str = field(default="linear", metadata={"help": "decay after warm-up", "choices": SCHEDULES})
    max_steps: int = field(default=15, metadata={"help": "optimizer steps per cell (ignored when epochs > 0)",
                                                 "ge": 0, "integer": True})
    epochs: int = field(default=0, metadata={"help": "train this many epochs instead of max_steps (0: use steps)",
                                             "ge": 0, "integer": True})
    tokens_per_step: int = field(default=8192, metadata={
        "help": "tokens per optimizer step: the effective batch is tokens_per_step // L sequences", "ge": 1,
        "integer": True})
    val_every: int = field(default=0, metadata={
        "help": "validate every N optimizer steps and test the best checkpoint (0: test the last weights)",
        "ge": 0, "integer": True})
    head_init: str = field(default="probe", metadata={
        "help": "probe: fit the head as a linear probe on frozen features first, then fine-tune (LP-FT) | random",
        "choices": HEAD_INITS})
    probe_examples: int = field(default=128, metadata={
        "help": "training documents the probe is fitted on (one frozen forward each)", "ge": 10, "integer": True})


def warmup_decay(step: int, warmup: int, total: int, schedule: str) -> float:
    """LR multiplier: linear warm-up to 1, then cosine or linear decay to 0 at `total` (or constant)."""
    if warmup and step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


class AdapterClassifier(L.LightningModule):
    """Trains only what requires grad (adapters + head); scores accuracy and macro-F1 with torchmetrics.

    Checkpoints hold only the trainable tensors and buffers (adapter state), not the frozen backbone, so
    `ModelCheckpoint` stays cheap for large models; loading is therefore non-strict.
    """

    def __init__(self, model: torch.nn.Module, num_labels: int, optim: OptimConfig | None = None,
                 lr: float | None = None, max_steps: int | None = None) -> None:
        """`lr`: the adapter matrices' peak rate (None: only the head trains); `max_steps`: the schedule's length
        (default `optim.max_steps`)."""
        super().__init__()
        self.model, self.optim = model, optim or OptimConfig()
        self.lr = lr
        self.max_steps = self.optim.max_steps if max_steps is None else max_steps
        self.strict_loading = False
        self.train_loss = MeanMetric()
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{name}": metric
            for stage in ("val", "test")
            for name, metric in (
                ("acc", MulticlassAccuracy(num_labels, average="micro")),
                ("f1", MulticlassF1Score(num_labels, average="macro")),
                ("n", SumMetric()),
                ("loss", MeanMetric()),
            )
        })
        self.predictions: list[dict] = []  # filled by test_step: row, label, prediction, p_pred, p_true

    def forward(self, batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"]
        # A mask with no padding is passed as None so SDPA can take its fast unmasked kernel.
        return self.model(input_ids=batch["input_ids"], attention_mask=None if bool(mask.all()) else mask).logits

    def on_fit_start(self) -> None:
        reset_ssm_state(self.model)  # 'carry' mode: start every cell from the zero state

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def _score(self, batch: dict, stage: str) -> torch.Tensor:
        logits = self(batch)
        preds, labels = logits.argmax(-1), batch["labels"]
        self.metrics[f"{stage}_acc"].update(preds, labels)
        self.metrics[f"{stage}_f1"].update(preds, labels)
        self.metrics[f"{stage}_n"].update(torch.tensor(float(len(labels)), device=labels.device))
        self.metrics[f"{stage}_loss"].update(torch.nn.functional.cross_entropy(logits.float(), labels,
                                                                               reduction="none"))
        return logits

    def _log_scores(self, stage: str) -> None:
        # The metric objects are logged, so Lightning reduces them over ranks once per epoch.
        for name in ("acc", "f1", "n", "loss"):
            self.log(f"{stage}_{name}", self.metrics[f"{stage}_{name}"], prog_bar=name == "acc")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._score(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")
        # The optimizer steps behind this score, for the learning curves (plots.learning_curve): the logger's
        # own `step` counts logging events, not optimizer steps.
        self.log("val_after_steps", float(self.global_step), sync_dist=False)

    def on_test_epoch_start(self) -> None:
        self.predictions = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logits = self._score(batch, "test")
        if "rows" in batch:  # this rank's per-document predictions (the cell gathers and writes them)
            probs = torch.softmax(logits.float(), -1).cpu()
            labels = batch["labels"].cpu()
            self.predictions += [
                {"row": int(r), "label": int(y), "prediction": int(p.argmax()), "p_pred": float(p.max()),
                 "p_true": float(p[y])} for r, y, p in zip(batch["rows"].cpu(), labels, probs)]

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def configure_optimizers(self):
        groups = trainable_groups(self.model)
        adapters = [p for _, p in groups["adapter"] + groups["other"]]
        if adapters and self.lr is None:
            raise ValueError("the model has trainable adapter parameters but no learning rate was given for them")
        param_groups = [
            {"params": adapters, "lr": self.lr},
            {"params": [p for _, p in groups["head"]], "lr": self.optim.head_lr},
        ]
        opt = torch.optim.AdamW([g for g in param_groups if g["params"]], weight_decay=self.optim.weight_decay)
        total = max(1, self.max_steps)
        warmup = int(self.optim.warmup_frac * total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_decay(s, warmup, total, self.optim.schedule))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        frozen = {f"model.{n}" for n, p in self.model.named_parameters() if not p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable or k not in frozen
        }
