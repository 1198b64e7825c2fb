"""Checkpoints written atomically, read with errors that say what is wrong with them."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdscope.models import BuildSpec, create_model, describe
from kdscope.train.seeding import rng_state, set_rng_state
from kdscope.train.state import LoopState


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, or written for another model or run."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write with ``torch.save`` to a temporary file, then rename: a crash never leaves half a
    file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


FORMAT = "kdscope-checkpoint-2"


def write_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write a checkpoint atomically as the bytes of ``torch.save(payload)`` with their SHA-256,
    so that a file damaged on disk or in transfer is refused instead of trained on."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    save_atomic(
        {"format": FORMAT, "sha256": hashlib.sha256(data).hexdigest(), "payload": data}, path
    )


def read_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """Load a kdscope checkpoint dict on the CPU, checking its SHA-256.

    Loading never runs code from the file: only tensors and plain containers are accepted
    (``torch.load(weights_only=True)``). A file that holds anything else (an older kdscope
    checkpoint, another tool's pickle) is refused unless ``trust`` is given, which unpickles it
    in full: pass it only for files whose origin you trust. Missing, corrupt or foreign files raise
    :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist")
    try:
        outer = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} holds objects other than tensors and plain data, which "
            "kdscope does not load without being told to trust the file (trust=True, or "
            f"--trust-checkpoints): {str(err).splitlines()[0]}"
        ) from None
    except Exception as err:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} is corrupt or not a torch file: {err}"
        ) from None
    if isinstance(outer, dict) and outer.get("format") == FORMAT:
        data = outer.get("payload", b"")
        if hashlib.sha256(data).hexdigest() != outer.get("sha256"):
            raise CheckpointError(
                f"Checkpoint {str(path)!r} is corrupt: its contents do not match the checksum "
                "written with them"
            )
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    elif trust:
        ckpt = outer
    else:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} was not written by this version of kdscope (no checksum); "
            "pass trust=True (--trust-checkpoints) to load it if you trust its origin"
        )
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} was not written by kdscope (no 'model' entry)"
        )
    return ckpt


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A checkpoint file, or a run directory (-> ``checkpoints/<which>.pt``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / f"{which}.pt"
    return path


def load_model(path: str | Path, which: str = "best", trust: bool = False) -> nn.Module:
    """Rebuild a zoo model from a kdscope checkpoint or run directory, in eval mode on the CPU
    (``trust``: see :func:`read_checkpoint`)."""
    ckpt = read_checkpoint(resolve_checkpoint(path, which), trust)
    spec = ckpt.get("model_spec")
    if not spec:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} has no model_spec: it holds weights of a model that is not "
            "in the zoo; build the model yourself and call load_state_dict(ckpt['model'])"
        )
    spec = BuildSpec.from_dict(spec)
    model = create_model(spec.name, spec.num_classes, spec.in_channels, **spec.kwargs)
    load_weights(model, ckpt["model"], str(path))
    return model.eval()


def load_weights(model: nn.Module, state: dict[str, Any], source: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"Checkpoint {source!r} does not fit {type(model).__name__}: {err}".split("\n\t")[0]
        ) from None


def save_training_state(
    path: Path, parts: dict[str, Any], state: LoopState, config: dict[str, Any] | None = None
) -> None:
    """Write everything a run needs to continue exactly: the state of each of ``parts`` (model,
    method, optimizer, scaler), the model's build spec and method name, the run's ``config``, and
    the :class:`LoopState` with the RNG states of this moment."""
    model, method = parts["model"], parts["method"]
    payload = {name: part.state_dict() for name, part in parts.items()}
    spec = describe(model).spec
    payload["model_spec"] = spec.to_dict() if spec else None
    payload["method_name"] = method.name or type(method).__name__
    payload["config"] = config
    loop = replace(state, rng=rng_state()).to_dict()
    write_checkpoint({**payload, **loop}, path)


def restore_training_state(
    checkpoint: str | Path | dict[str, Any], parts: dict[str, Any]
) -> dict[str, Any]:
    """Load :func:`save_training_state`'s checkpoint (a path, or the dict
    :func:`read_checkpoint` returned) into ``parts`` and restore the RNG states; returns the
    checkpoint (``LoopState.from_dict`` reads the loop's state from it). A checkpoint of another
    model or run raises ``CheckpointError``."""
    path = checkpoint if not isinstance(checkpoint, dict) else "the checkpoint"
    ckpt = read_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    spec = describe(parts["model"]).spec
    saved = ckpt.get("model_spec")
    if saved and spec and saved != spec.to_dict():
        raise CheckpointError(
            f"{path} was written for student {saved['name']!r} ({saved}), but this run builds "
            f"{spec.to_dict()}"
        )
    try:
        for name in ("model", "method", "optimizer"):
            parts[name].load_state_dict(ckpt[name])
    except (RuntimeError, ValueError, KeyError) as err:
        first_line = str(err).splitlines()[0]
        raise CheckpointError(f"{path} does not match this run: {first_line}") from None
    parts["scaler"].load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return ckpt
