"""Weights as safetensors; the training state read through ``torch.load(weights_only=True)``, which
unpickles only tensors and plain containers: a hostile pickle is refused, never run.

A weight file holds ``<net>.<parameter>`` tensors for a dict of networks plus string metadata
(e.g. the latent ``scale_factor``), so one file rebuilds a stage's networks together with its config.yaml.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foscu.errors import InputError
from foscu.runs import atomic_path


def plain(module: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel or torch.compile wrapper."""
    module = getattr(module, "module", module)
    return getattr(module, "_orig_mod", module)


def state_tensors(nets: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Flatten a dict of networks into ``<net>.<key>`` -> CPU tensor (cloned: no shared storage)."""
    out: dict[str, torch.Tensor] = {}
    for name, net in nets.items():
        for key, value in plain(net).state_dict().items():
            out[f"{name}.{key}"] = value.detach().to("cpu").contiguous().clone()
    return out


def save_weights(
    path: str | Path, nets: dict[str, nn.Module], metadata: dict[str, Any] | None = None
) -> None:
    """Write networks' weights atomically as safetensors; metadata values are stored as JSON strings."""
    from safetensors.torch import save_file

    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(state_tensors(nets), str(tmp), metadata=meta)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file -> (tensors, metadata); anything else is refused with InputError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weight file not found")
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as handle:
            raw_meta = handle.metadata() or {}
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
        metadata = {k: json.loads(v) for k, v in raw_meta.items()}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise InputError(
            path, f"not a valid safetensors weight file, refused ({type(err).__name__})"
        ) from None
    return tensors, metadata


def load_weights(path: str | Path, nets: dict[str, nn.Module], strict: bool = True) -> dict[str, Any]:
    """Load ``<net>.<key>`` tensors into each network of ``nets``; returns the file's metadata."""
    tensors, metadata = read_weights(path)
    for name, net in nets.items():
        prefix = f"{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not state and strict:
            raise InputError(path, f"holds no weights for network {name!r} (has: {_net_names(tensors)})")
        try:
            plain(net).load_state_dict(state, strict=strict)
        except RuntimeError as err:
            first = str(err).splitlines()[0] if str(err) else "shape mismatch"
            raise InputError(path, f"weights do not fit network {name!r}: {first}") from None
    return metadata


def _net_names(tensors: dict[str, torch.Tensor]) -> str:
    return ", ".join(sorted({k.split(".", 1)[0] for k in tensors})) or "nothing"


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training state atomically: tensors and plain containers only (what ``load_state`` accepts).

    ``fit`` saves the step, seed, best score and its step, the checkpoint's file name, and the optimiser
    and fp16 loss-scaler state; no RNG state, since the engine reseeds from (seed, step) at every step.
    """
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | Path) -> dict[str, Any]:
    """Load a training state with ``weights_only=True``: a hostile pickle is refused, never executed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "training state not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as err:
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise InputError(path, f"refused: not a plain training-state file ({reason})") from None
    if not isinstance(state, dict):
        raise InputError(path, "refused: training state is not a mapping")
    return state
