"""Small real subsets of FSDD and SST-2 in a temporary folder, for end-to-end tests: 3 speakers'
first 12 takes of every digit (takes 0-4 are FSDD's test split: 150 test, 210 train recordings)
and the first 600 / 120 lines of SST-2's train / dev TSVs."""

from pathlib import Path

import pytest

from kdscope.data.registry import dataset_dir

SPEAKERS = ("george", "jackson", "theo")
TAKES = range(12)
SST2_LINES = {"train.tsv": 600, "dev.tsv": 120}


def real_subset(name: str, root: Path) -> Path:
    """The subset of dataset ``name`` under ``root``, as a ``data.data_dir``; skips where the
    workspace copy is absent."""
    source = dataset_dir(name, None)
    if name == "fsdd":
        recordings = source / "recordings"
        if not recordings.is_dir():
            pytest.skip(f"FSDD recordings not found under {source} (set KDSCOPE_DATA)")
        folder = root / "fsdd" / "recordings"
        folder.mkdir(parents=True)
        for digit in range(10):
            for speaker in SPEAKERS:
                for take in TAKES:
                    file = f"{digit}_{speaker}_{take}.wav"
                    (folder / file).symlink_to(recordings / file)
        return folder.parent
    if not (source / "train.tsv").is_file():
        pytest.skip(f"SST-2 not found under {source} (set KDSCOPE_DATA)")
    folder = root / "sst2"
    folder.mkdir(parents=True)
    for file, lines in SST2_LINES.items():
        with open(source / file, encoding="utf-8") as f:
            head = [next(f) for _ in range(lines + 1)]  # + the header
        (folder / file).write_text("".join(head), encoding="utf-8")
    return folder
