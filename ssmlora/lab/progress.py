"""A training bar that counts optimizer steps (`7/15`), not micro-batches against a guessed total."""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar over the optimizer steps of the whole fit, removed when training ends. There are no
    validation or test bars: a sweep prints one result line per cell instead."""

    def __init__(self) -> None:
        super().__init__(leave=False)

    def init_train_tqdm(self) -> Tqdm:
        steps = self.trainer.max_steps
        return Tqdm(desc="train steps", total=steps if steps > 0 else None, leave=False, dynamic_ncols=True,
                    file=sys.stdout, smoothing=0, bar_format=self.BAR_FORMAT)

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def init_test_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def on_train_epoch_start(self, trainer, *_) -> None:
        pass  # one bar for the whole fit, however many epochs it takes

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if bar.n != trainer.global_step:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass  # on_train_end closes the bar
