"""The one shape every dataset takes inside kdscope."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Generator, Tensor
from torch.utils.data import Dataset

BatchAugment = Callable[[Tensor, Generator], Tensor]


@dataclass
class DataBundle:
    """Train/val/test splits of one dataset plus what models and metrics need to know about it.

    Every split yields ``(image, label, index)``: ``index`` is the example's position in its split,
    which the teacher cache and memory-bank methods key on. Images are normalised float tensors (C,
    H, W). ``augment`` is applied by the Trainer to whole training batches on the device (random
    crop + flip for ``standard``), drawing from the generator it is given so runs are reproducible
    and resumable.
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: BatchAugment | None = None
    source: str | None = None  # where the files were read from, when they were
    task: str = "classification"  # or "segmentation", "detection", "language-modelling"
    inputs: str = "image"  # what an example is: "image" (C, H, W), "waveform" (C, L), "tokens" (T,)
    # The representation, for a dataset offered in several (fsdd: "logmel" or "waveform"): a
    # log-mel bundle's images are spectrograms (figures draw them so), and runs on two
    # representations of one dataset pair their examples by index (cross-representation KD).
    view: str | None = None
