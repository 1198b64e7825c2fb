"""Dataset registry and the one entry point ``load_data``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdscope.config import DataConfig
from kdscope.data.bundle import DataBundle
from kdscope.data.transforms import get_augment
from kdscope.registry import Registry

DatasetFactory = Callable[..., DataBundle]
DATASETS: Registry[DatasetFactory] = Registry("dataset")

DEFAULT_DATA_DIR = Path.home() / ".cache" / "kdscope" / "datasets"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where kdscope looked; the message says how to provide them."""


def dataset_dir(name: str, data_dir: Path | None) -> Path:
    """Where the files of dataset ``name`` are looked up: ``data_dir`` when given, else
    ``$KDSCOPE_DATA/<name>`` when the environment variable ``KDSCOPE_DATA`` is set (tests and CI
    set it to the workspace's shared data), else ``~/.cache/kdscope/datasets/<name>``.

    The path is absolute: a relative one names the folder under the working directory of this call,
    and must still name it where it is recorded or linked to from elsewhere."""
    if data_dir is not None:
        return Path(data_dir).expanduser().absolute()
    root = os.environ.get("KDSCOPE_DATA")
    return ((Path(root).expanduser() if root else DEFAULT_DATA_DIR) / name).absolute()


def register_dataset(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    """Register ``factory(*, data_dir, download, val_fraction, seed, train_size, **options)``.

    ``data_dir`` is a Path or None (the factory picks its default, usually
    :data:`DEFAULT_DATA_DIR`).
    The factory returns a :class:`DataBundle` without augmentation (``load_data`` sets it). It must
    carve validation from the official train split and honour ``train_size`` with
    :func:`~kdscope.data.splits.carve_splits`, so every dataset splits the same way.
    """
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    return DATASETS.names()


def load_data(cfg: DataConfig | str, **fields: Any) -> DataBundle:
    """Load a dataset as a :class:`DataBundle` of train/val/test splits: the one entry point.

    Parameters
    ----------
    cfg : a :class:`~kdscope.config.DataConfig`, or a dataset name (one of :func:`list_datasets`)
        with ``fields`` its other settings (``load_data("digits", train_size=256)``; a field that
        is not one of DataConfig's is a dataset option). The fields that shape the splits:

        - ``data_dir``: where the dataset's files are (see :func:`dataset_dir`); ``imagefolder``
          requires it and ``digits`` ignores it. ``download``: fetch missing files.
        - ``val_fraction``: share of the official train split held out as validation, stratified.
        - ``augment``: batched training augmentation preset (``kdscope.data.AUGMENTS``).
        - ``seed``: seeds the validation split and the ``train_size`` subset; the test split never
          depends on it. The same seed always gives the same splits.
        - ``train_size``: keep only this many training examples (stratified).
        - ``options``: dataset-specific settings, e.g. ``image_size`` for ``imagefolder``.
    """
    if isinstance(cfg, str):
        # Fields that DataConfig does not have are the dataset's own options (image_size=...).
        options = dict(fields.pop("options", {}))
        options |= {k: fields.pop(k) for k in list(fields) if k not in DataConfig.model_fields}
        cfg = DataConfig(name=cfg, options=options, **fields)
    elif fields:
        cfg = cfg.model_copy(update=fields)
    factory = DATASETS.get(cfg.name)
    augment_fn = get_augment(cfg.augment)
    params = inspect.signature(factory).parameters
    accepted = set(params) - set(DataConfig.model_fields)
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(cfg.options) - accepted)
    if unknown and not open_ended:
        raise ValueError(
            f"dataset {cfg.name!r} has no option {', '.join(map(repr, unknown))}; its options: "
            f"{', '.join(sorted(accepted)) or 'none'}"
        )
    bundle = factory(
        data_dir=cfg.data_dir.expanduser() if cfg.data_dir is not None else None,
        download=cfg.download,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        train_size=cfg.train_size,
        **cfg.options,
    )
    dense = bundle.task in ("segmentation", "detection")
    if augment_fn is not None and dense != getattr(augment_fn, "moves_targets", False):
        needs = (
            "'dense' (masks and boxes move with the image)" if dense else "an image augmentation"
        )
        raise ValueError(
            f"data.augment={cfg.augment!r} does not fit {bundle.task} data {cfg.name!r}: it "
            f"takes {needs} or 'none'"
        )
    bundle.augment = augment_fn
    return bundle


def load_teacher_view(cfg: DataConfig, recorded: dict | None, student: DataBundle):
    """The teacher's representation of ``cfg``'s examples, or None when it has the student's.

    ``recorded`` is the data section the teacher was trained with (from its checkpoint) and
    ``student`` the student's bundle. When the teacher learnt the same dataset from other options
    that give another representation (a log-mel teacher of a waveform student, or a log-mel one
    of other bands or hop: another ``view`` or another input size), this loads ``cfg`` with the
    teacher's options: the same splits and examples in the same order (every loader orders and
    splits examples without looking at their representation), so example ``i`` of a split is the
    same in both bundles: what cross-representation KD and its evaluation pair on.
    """
    if not recorded or recorded.get("name") != cfg.name:
        return None
    options = dict(recorded.get("options") or {})
    if options == cfg.options:
        return None
    bundle = load_data(cfg.model_copy(update={"options": options}))
    same = (bundle.view, bundle.image_size) == (student.view, student.image_size)
    return None if bundle.view is None or same else bundle
