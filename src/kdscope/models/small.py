"""Small networks for quick studies: an AlexNet-style conv net and an MLP."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from kdscope.models.info import ModelInfo
from kdscope.models.registry import register_model


def _conv_bn(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_channels)]  # fmt: skip


class AlexNetSmall(nn.Module):
    """AlexNet (Krizhevsky et al. 2012) at half width for small images, in three stages.

    ``stage1``: 5x5 conv (48); ``stage2``: 5x5 conv (128); ``stage3``: three 3x3 convs (192, 192,
    128); each stage ends in 2x2 max-pooling, so 32x32 inputs give 16, 8 and 4 pixel feature maps.
    Then global pooling, dropout 0.5 and one linear ``classifier``. Deviations from AlexNet: batch
    norm instead of local response normalisation, 2x2 instead of overlapping 3x3 pooling, stride-1
    first conv, and a single linear layer instead of the three fully connected ones, so that the
    classifier applies to pooled features (as GLD needs).

    Each stage pools before its last ReLU (max-pooling commutes with ReLU), so ``"<stage>.act:in"``
    is the pre-activation feature at the stage's output resolution.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        self.stage1 = self._stage(_conv_bn(in_channels, 48, 5))
        self.stage2 = self._stage(_conv_bn(48, 128, 5))
        self.stage3 = self._stage(
            [
                *_conv_bn(128, 192, 3),
                nn.ReLU(inplace=True),
                *_conv_bn(192, 192, 3),
                nn.ReLU(inplace=True),
                *_conv_bn(192, 128, 3),
            ]
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(128, num_classes)

        stages = ("stage1", "stage2", "stage3")
        self.kdscope_info = ModelInfo(
            num_classes=num_classes,
            in_channels=in_channels,
            stages=stages,
            preact=tuple(f"{name}.act:in" for name in stages),
            classifier="classifier",
            pooled_map="avgpool:in",
        )

    @staticmethod
    def _stage(layers: list[nn.Module]) -> nn.Sequential:
        named = [(str(i), layer) for i, layer in enumerate(layers)]
        return nn.Sequential(OrderedDict([*named, ("pool", nn.MaxPool2d(2)), ("act", nn.ReLU())]))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.classifier(self.dropout(self.avgpool(x).flatten(1)))


class MLP(nn.Module):
    """Fully connected ReLU network on flattened images.

    Images are first average-pooled to ``input_size x input_size`` (adaptive pooling), so any image
    size is accepted and the network is a plain MLP on the pixels when ``input_size`` equals the
    image side (pass 28 for Fashion-MNIST, 8 for digits; the default 32 fits CIFAR). Hidden layers
    ``hidden.fc1, hidden.fc2, ...`` are Linear + ReLU; ``"hidden.fc<i>.act:in"`` is the
    pre-activation.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        hidden_sizes: Sequence[int] = (512, 256),
        input_size: int = 32,
    ):
        super().__init__()
        if not hidden_sizes or min(hidden_sizes) < 1:
            raise ValueError(
                f"hidden_sizes must be one or more positive ints, got {hidden_sizes!r}"
            )
        if input_size < 1:
            raise ValueError(f"input_size must be a positive int, got {input_size}")
        self.pool = nn.AdaptiveAvgPool2d(input_size)
        widths = [in_channels * input_size * input_size, *hidden_sizes]
        self.hidden = nn.Sequential(
            OrderedDict(
                (f"fc{i}", nn.Sequential(OrderedDict(linear=nn.Linear(a, b), act=nn.ReLU())))
                for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False), start=1)
            )
        )
        self.classifier = nn.Linear(widths[-1], num_classes)

        stages = tuple(f"hidden.fc{i}" for i in range(1, len(hidden_sizes) + 1))
        self.kdscope_info = ModelInfo(
            num_classes=num_classes,
            in_channels=in_channels,
            stages=stages,
            preact=tuple(f"{name}.act:in" for name in stages),
            classifier="classifier",
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.hidden(self.pool(x).flatten(1)))


@register_model("alexnet_small")
def alexnet_small(num_classes: int, in_channels: int = 3, **kwargs) -> AlexNetSmall:
    return AlexNetSmall(num_classes, in_channels, **kwargs)


@register_model("mlp")
def mlp(num_classes: int, in_channels: int = 3, **kwargs) -> MLP:
    """MLP; ``hidden_sizes`` (default (512, 256)) and ``input_size`` (image side, default 32)."""
    return MLP(num_classes, in_channels, **kwargs)
