"""A quantised student: quantisation-aware training with KD in the Trainer, then int8 conversion."""

from __future__ import annotations

import copy
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from kdscope.api import distill
from kdscope.data import collate
from kdscope.metrics import accuracy
from kdscope.models import ModelInfo, describe, set_info
from kdscope.train import save_atomic

BACKENDS = ("x86", "fbgemm", "qnnpack")


def model_bytes(model: nn.Module) -> int:
    """Size of ``model``'s state dict as ``torch.save`` writes it, in bytes."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def prepare_qat(model: nn.Module, example: torch.Tensor, backend: str = "x86") -> nn.Module:
    """A fake-quantised copy of ``model`` for quantisation-aware training (PyTorch's default QAT
    qconfig for ``backend``: int8 per-channel weights, uint8 activations; conv+BN+ReLU fused).

    FX graph mode (``prepare_qat_fx``) rather than eager ``prepare_qat``: it traces the model, so
    residual additions and the input/output (de)quantisation need no edit of the model's code.
    Observers update only in training mode, so evaluating the model does not move its
    quantisation ranges.
    """
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        qat = prepare_qat_fx(
            copy.deepcopy(model).cpu().train(),
            get_default_qat_qconfig_mapping(backend),
            (example.cpu(),),
        )
    qat.register_forward_pre_hook(_observe_in_training_only)
    # Tracing renames the layers: only the output's description carries over.
    info = describe(model)
    return set_info(qat, ModelInfo(num_classes=info.num_classes, in_channels=info.in_channels))


def _observe_in_training_only(module: nn.Module, args: tuple) -> None:
    from torch.ao.quantization import disable_observer, enable_observer

    if getattr(module, "_observing", None) is not module.training:
        module.apply(enable_observer if module.training else disable_observer)
        module._observing = module.training


def convert_int8(qat: nn.Module, backend: str = "x86") -> nn.Module:
    """The int8 model of a QAT model (``convert_fx``), on the CPU in eval mode."""
    from torch.ao.quantization.quantize_fx import convert_fx

    torch.backends.quantized.engine = backend
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        return convert_fx(copy.deepcopy(qat).cpu().eval())


@dataclass
class QuantizedResult:
    """The QAT run and the int8 student, with sizes and test accuracies before/after conversion."""

    root: Path
    fit: Any  # kdscope.train.FitResult of the QAT stage
    model: nn.Module  # the converted int8 student (CPU)
    float_bytes: int
    int8_bytes: int
    qat_test_acc: float | None  # fake-quantised student, before conversion
    int8_test_acc: float | None  # after conversion

    def summary(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "float_bytes": self.float_bytes,
            "int8_bytes": self.int8_bytes,
            "qat_test_acc": self.qat_test_acc,
            "int8_test_acc": self.int8_test_acc,
        }


def quantized_student(
    teacher: nn.Module | None,
    student: nn.Module,
    train: Dataset,
    out_dir: str | Path,
    *,
    val: Dataset | None = None,
    test_set: Dataset | None = None,
    method: str = "kd",
    backend: str = "x86",
    epochs: int = 10,
    batch_size: int = 128,
    progress: bool = True,
    **train_options: Any,
) -> QuantizedResult:
    """Train a fake-quantised ``student`` with ``method`` from ``teacher`` (Jacob et al. 2018,
    "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
    CVPR 2018, arXiv:1712.05877, with KD as in Polino, Pascanu, Alistarh 2018, "Model compression
    via distillation and quantization", ICLR 2018, arXiv:1802.05668), then convert it to int8.

    ``student`` is float (e.g. fresh or pretrained); :func:`prepare_qat` makes its QAT copy, the
    ordinary Trainer trains it (``train_options`` are TrainConfig fields; AMP is off unless asked
    for, fake quantisation being float32), :func:`convert_int8` converts it. Quantised kernels
    run on the CPU, so conversion and the int8 accuracy are CPU-side. Writes the run directory
    ``out_dir/qat``, ``out_dir/int8.pt`` (the int8 state dict) and ``out_dir/summary.json``.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    example = collate([train[0]])[0]
    qat = prepare_qat(student, example, backend)
    train_options.setdefault("amp", False)
    fit = distill(
        teacher,
        qat,
        train,
        val,
        method=method,
        epochs=epochs,
        batch_size=batch_size,
        run_dir=root / "qat",
        progress=progress,
        **train_options,
    )
    qat = qat.cpu().eval()
    int8 = convert_int8(qat, backend)
    save_atomic(int8.state_dict(), root / "int8.pt")
    cpu = torch.device("cpu")
    result = QuantizedResult(
        root=root,
        fit=fit,
        model=int8,
        float_bytes=model_bytes(student),
        int8_bytes=model_bytes(int8),
        qat_test_acc=accuracy(qat, test_set, 512, cpu) if test_set is not None else None,
        int8_test_acc=accuracy(int8, test_set, 512, cpu) if test_set is not None else None,
    )
    (root / "summary.json").write_text(json.dumps(result.summary(), indent=2))
    return result
