"""1-D CNNs on raw waveforms."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from kdscope.models.info import ModelInfo
from kdscope.models.registry import register_model


def _block(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 1
) -> nn.Sequential:
    # Pooling before the ReLU (they commute) makes "<block>.act:in" the pre-activation at the
    # block's output resolution, as in AlexNetSmall.
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv1d(in_channels, out_channels, kernel, stride, padding),
            bn=nn.BatchNorm1d(out_channels),
            pool=nn.MaxPool1d(4),
            act=nn.ReLU(),
        )
    )


class M5(nn.Module):
    """M5 of Dai, Dai, Qu, Li and Das 2017, "Very Deep Convolutional Neural Networks for Raw
    Waveforms", arXiv:1610.00087 (Table 1): four conv blocks on an 8 kHz waveform (B, 1, L).

    ``block1``: 128 filters of 80 samples (10 ms) with stride 4; ``block2``: 128, ``block3``: 256,
    ``block4``: 512 filters of 3 samples; every conv is followed by batch norm, ReLU and 4x max
    pooling, so a 1 s input (8000 samples) gives maps of 500, 125, 31 and 7 steps. Then global
    average pooling and one linear ``classifier``; 0.56M parameters at 10 classes (the paper:
    0.5M). Deviations: none in the layers; the first conv is padded by 38 so that its output has
    L / 4 steps, as the paper's Table 1 shows. ``"<block>.act:in"`` is the pre-activation.
    """

    def __init__(self, num_classes: int, in_channels: int = 1):
        super().__init__()
        self.block1 = _block(in_channels, 128, 80, stride=4, padding=38)
        self.block2 = _block(128, 128, 3)
        self.block3 = _block(128, 256, 3)
        self.block4 = _block(256, 512, 3)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.classifier = nn.Linear(512, num_classes)

        stages = ("block1", "block2", "block3", "block4")
        self.kdscope_info = ModelInfo(
            num_classes=num_classes,
            in_channels=in_channels,
            stages=stages,
            preact=tuple(f"{s}.act:in" for s in stages),
            classifier="classifier",
            pooled_map="block4",
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"M5 expects waveforms of shape (B, C, samples), got {tuple(x.shape)}")
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.classifier(self.avgpool(x).flatten(1))


@register_model("m5", inputs=("waveform",))
def m5(num_classes: int, in_channels: int = 1, **kwargs) -> M5:
    """M5 on raw waveforms (B, in_channels, samples), e.g. ``fsdd`` with ``input="waveform"``."""
    return M5(num_classes, in_channels, **kwargs)
