"""Gradient checkpointing for adapters whose output depends on more than their input.

SSMLoRA's ``depth`` and ``carry`` modules read a state that another module wrote (the previous link of their
chain, or the previous forward pass); ``scan`` modules read the attention mask of the forward pass in flight.
Gradient checkpointing reruns a layer's forward in backward, when the live state has moved on (later layers,
later forward passes) and the mask holder has been cleared. So a recomputed layer must be handed what the layer
saw on entry in its own forward pass.

How, for every way of checkpointing a layer: Hugging Face's switch (`gradient_checkpointing_enable`,
reentrant or not, which since transformers 5 checkpoints `forward` and leaves the layer's own hooks outside),
`transformers.Trainer`, or `torch.utils.checkpoint` wrapped by hand around one layer.

- In every forward pass a pre-hook on each adapted layer records what its adapters will read on entry (the
  entry state of each chain it reads, or the mask), keyed by the storage of the layer's input hidden states.
- Every checkpoint keeps a layer's inputs alive for its recomputation and hands back the same storage (the
  non-reentrant form the same tensor, the reentrant form a detached view of it). Pre-hooks on the layer and on
  its direct children run inside whatever was checkpointed, so in backward the first of them to meet that
  input selects the layer's record, and the adapters read it instead of the live state.
- A record is held through a weak reference to that input, so it lives exactly as long as the autograd graph
  that may recompute the layer; any number of forward passes may precede one backward.

A recomputation that finds no record (a checkpoint around part of a layer, or around several layers at once,
whose inner layers get freshly recomputed inputs) raises instead of using a wrong state. One limit: the same
input tensor fed to one layer by two forward passes before one backward (e.g. one `inputs_embeds` tensor passed
twice) keeps the later pass's record; ``carry`` mode's first layer would then replay the later pass's state.
"""

from __future__ import annotations

import weakref
import torch
import torch.nn as nn

_HOOKED = "_adapter_entries"  # attribute on each hooked module: (its LayerEntries, layer index, is the layer)


def in_backward() -> bool:
    """True while autograd runs a backward pass: that is when gradient checkpointing recomputes a layer."""
    return torch._C._current_graph_task_id() != -1


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device, t.data_ptr(), tuple(t.shape), tuple(t.stride()))


def _tensors(args: tuple, kwargs: dict):
    yield from (a for a in args if isinstance(a, torch.Tensor))
    yield from (v for v in kwargs.values() if isinstance(v, torch.Tensor))


class _Record:
    __slots__ = ("layer", "values", "anchor", "__weakref__")

    def __init__(self, layer: int, values: dict):
        self.layer, self.values, self.anchor = layer, values, None


class LayerEntries(nn.Module):
    """What each adapted layer's adapters read on entry, per forward pass, for its recomputation in backward.

    `source.layer_entry(layer)` returns that dict (chain key -> state, or ``{"mask": mask}``) at the layer's
    entry; the adapters call `replay(layer, name)` when they run in backward. A module without parameters or
    buffers, so it copies and saves with the model and adds nothing to its `state_dict`.
    """

    def __init__(self, source: nn.Module):
        super().__init__()
        self._source = [source]  # a list keeps the source (the state bus or the mask holder) out of the children
        self._records: dict[tuple, _Record] = {}
        self._replaying: dict[int, weakref.ref] = {}

    def install(self, layers: dict[int, nn.Module]) -> None:
        """Hook `layers` (index -> transformer layer module) and their direct children."""
        for index, layer in layers.items():
            for module in (layer, *layer.children()):
                object.__setattr__(module, _HOOKED, (self, index, module is layer))
                module.register_forward_pre_hook(_on_forward, with_kwargs=True)

    def replay(self, layer: int | None, name: str):
        """The value `name` that layer `layer` saw on entry in the forward pass being recomputed."""
        ref = self._replaying.get(layer) if layer is not None else None
        record = ref() if ref is not None else None
        if record is None:
            where = "the classifier head" if layer is None else f"layer {layer}"
            raise RuntimeError(
                f"an SSMLoRA adapter in {where} is being recomputed in backward (gradient checkpointing) but no "
                "record of what it saw in its forward pass matches the recomputation's input. Checkpoint whole "
                "transformer layers, one per checkpoint: model.gradient_checkpointing_enable() does, and so does "
                "torch.utils.checkpoint.checkpoint(layer, hidden_states, ...) around one layer"
            )
        return record.values.get(name)

    def _record(self, layer: int, args: tuple, kwargs: dict) -> None:
        hidden = kwargs.get("hidden_states")
        if not isinstance(hidden, torch.Tensor):
            hidden = next(_tensors(args, kwargs), None)
        if hidden is None:
            return
        key, record = _storage_key(hidden), _Record(layer, self._source[0].layer_entry(layer))
        records = self._records

        def forget(_, key=key, record=record) -> None:
            if records.get(key) is record:
                del records[key]

        record.anchor = weakref.ref(hidden, forget)
        records[key] = record

    def _select(self, layer: int, args: tuple, kwargs: dict) -> None:
        for t in _tensors(args, kwargs):
            record = self._records.get(_storage_key(t))
            if record is not None and record.layer == layer and record.anchor() is not None:
                self._replaying[layer] = weakref.ref(record)
                return

    def __getstate__(self) -> dict:
        # Records point at the tensors of this model's live graphs (weak references, which neither copy nor
        # pickle): a copy starts with none.
        return {**self.__dict__, "_records": {}, "_replaying": {}}


def _on_forward(module: nn.Module, args: tuple, kwargs: dict) -> None:
    entries, layer, is_layer = getattr(module, _HOOKED)
    if in_backward():
        entries._select(layer, args, kwargs)
    elif is_layer:
        entries._record(layer, args, kwargs)
