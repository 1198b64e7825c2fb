"""Model zoo: CIFAR ResNets, WRNs, VGGs, MobileNetV2, small nets; torchvision as ``tv:<name>``,
timm as ``timm:<name>``, local Hugging Face folders as ``hf:<path>``."""

from kdscope.models import (  # noqa: F401  (registers the zoo)
    audio,
    detection,
    gpt,
    mobilenetv2,
    resnet,
    segmentation,
    small,
    text,
    vgg,
    wrn,
)
from kdscope.models.info import BuildSpec, ModelInfo, classifier_of, describe, set_info
from kdscope.models.outputs import (
    IGNORE_INDEX,
    OutputReader,
    example_features,
    example_shape,
    reader,
)
from kdscope.models.registry import (
    MODEL_FITS,
    MODEL_PREFIXES,
    MODELS,
    create_model,
    list_models,
    register_model,
)
from kdscope.models.summary import model_summary, zoo_table

__all__ = [
    "MODELS",
    "MODEL_FITS",
    "MODEL_PREFIXES",
    "IGNORE_INDEX",
    "OutputReader",
    "BuildSpec",
    "ModelInfo",
    "classifier_of",
    "create_model",
    "describe",
    "list_models",
    "model_summary",
    "reader",
    "example_features",
    "example_shape",
    "register_model",
    "set_info",
    "zoo_table",
]
