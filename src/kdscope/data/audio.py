"""Free Spoken Digit Dataset (Jackson et al. 2018, github.com/Jakobovski/free-spoken-digit-dataset)
as log-mel spectrograms or raw waveforms, held whole in memory.

Every recording is decoded once per load, mixed down to mono, resampled to 8 kHz and centred in a
fixed 1 s window (zero-padded on both sides, or its middle second kept), then turned into the
requested representation and normalised with the train split's mean and standard deviation.

Cross-representation distillation (a spectrogram teacher, a waveform student) uses two bundles,
``load_data("fsdd", input="logmel", seed=s)`` and ``load_data("fsdd", input="waveform", seed=s)``:
the files are ordered and split from the file names and labels alone, never from the signal, so
the two bundles' splits hold the same recordings in the same order (each split's ``files`` says
which) and ``index`` names the same example in both; the teacher cache, which is keyed on
``index``, then serves the teacher's outputs to the student's batches unchanged.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdscope.data.bundle import DataBundle
from kdscope.data.registry import DatasetNotFoundError, dataset_dir, register_dataset
from kdscope.data.splits import carve_splits, split_index

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SAMPLE_RATE = 8000
CLIP_SAMPLES = SAMPLE_RATE  # the fixed 1 s window
# The usual FSDD protocol: takes 0-4 of every speaker and digit are the test set.
TEST_TAKES = range(5)
# Log-mel front end: 32 ms Hann windows every 10 ms (101 frames a second, librosa's centred
# frames), 64 Slaney mel bands spanning 0 Hz to Nyquist, power spectrogram, natural log. The band
# count and the hop are options (``mels``, ``hop_ms``) within the ranges below: more bands than
# 64 leave low bands without an FFT bin at 256 points, a hop over the window skips samples.
N_FFT = 256
HOP_MS = 10
HOP_LENGTH = HOP_MS * SAMPLE_RATE // 1000
N_MELS = 64
MELS_RANGE = (8, 64)
HOP_MS_RANGE = (1, N_FFT * 1000 // SAMPLE_RATE)
FMIN = 0.0
FMAX = SAMPLE_RATE / 2
# Added before the log so that digital silence (the padding) maps to log(1e-6) = -13.8, not -inf.
LOG_OFFSET = 1e-6
FRAMES = 1 + CLIP_SAMPLES // HOP_LENGTH

SOURCE_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/26eb9aa.zip"
_NAME = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$")
Input = Literal["logmel", "waveform"]


class FloatMemoryDataset(Dataset):
    """Float examples ``(N, *shape)`` held in memory, normalised once when the split is built.

    Items are ``(x, label, index)``; ``__getitems__`` serves a whole batch with one
    ``index_select``, as :class:`~kdscope.data.memory.InMemoryDataset` does. ``files`` names the
    recording behind each example (the same in every representation of a split).
    """

    def __init__(self, values: Tensor, labels: Tensor, files: Sequence[str]):
        if not values.is_floating_point():
            raise ValueError(f"values must be a float tensor, got {values.dtype}")
        if not len(values) == len(labels) == len(files):
            raise ValueError(
                f"{len(values)} examples, {len(labels)} labels and {len(files)} file names: "
                f"they must match"
            )
        self.values = values.contiguous()
        self.labels = labels.long()
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        i = split_index(i, len(self))
        return self.values[i], int(self.labels[i]), i

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.values.index_select(0, index), self.labels.index_select(0, index), index

    def tensors(self) -> tuple[Tensor, Tensor]:
        """The whole split as ``(values (N, *shape), labels (N,))``."""
        return self.values, self.labels


def read_wav(path: str | Path) -> np.ndarray:
    """Decode one WAV file to float32 mono samples in [-1, 1] at 8 kHz.

    Any PCM or float sample format soundfile reads is accepted (16-bit PCM is exact); several
    channels are averaged; another sample rate is resampled with soxr's high-quality filter
    (``librosa.resample(res_type="soxr_hq")``). An empty file, a file that is not audio, or audio
    in another container than WAV is refused with a ``ValueError`` naming the file.
    """
    import soundfile as sf

    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is an empty file, not a WAV recording")
    try:
        info = sf.info(str(path))
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError as err:  # soundfile's LibsndfileError
        raise ValueError(f"{path} is not a readable WAV file ({err})") from None
    if info.format not in ("WAV", "WAVEX"):
        raise ValueError(f"{path} is a {info.format} file, not a WAV file")
    if samples.shape[0] == 0:
        raise ValueError(f"{path} is an empty WAV file (no samples)")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if rate != SAMPLE_RATE:
        import librosa

        mono = librosa.resample(mono, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    return np.ascontiguousarray(mono, dtype=np.float32)


def fit_window(samples: np.ndarray, length: int = CLIP_SAMPLES) -> np.ndarray:
    """Centre ``samples`` in ``length`` samples: zero-pad both sides (the extra sample of an odd
    padding goes right), or keep the middle ``length`` samples of a longer recording."""
    n = len(samples)
    if n >= length:
        start = (n - length) // 2
        return samples[start : start + length]
    left = (length - n) // 2
    return np.pad(samples, (left, length - n - left))


def log_mel(waves: np.ndarray, n_mels: int = N_MELS, hop_length: int = HOP_LENGTH) -> np.ndarray:
    """Log-mel spectrograms ``(N, n_mels, 1 + CLIP_SAMPLES // hop_length)`` of 8 kHz waveforms
    ``(N, CLIP_SAMPLES)``: ``log(mel_power + LOG_OFFSET)`` with librosa's Slaney mel filterbank
    (constants above; the defaults give ``(N, 64, 101)``).

    The power spectrogram is ``torch.stft`` with a periodic Hann window and zero-padded centred
    frames: what ``librosa.feature.melspectrogram`` computes (equal to float32 precision), without
    its first-call start-up, which took 4-9 s here against 2 s for all 3000 recordings.
    """
    import librosa

    bank = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels, fmin=FMIN, fmax=FMAX)
    spec = torch.stft(
        torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)),
        N_FFT,
        hop_length,
        window=torch.hann_window(N_FFT),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    mel = torch.from_numpy(bank) @ spec.abs().square()
    return mel.add_(LOG_OFFSET).log_().numpy()


def list_recordings(folder: Path) -> list[tuple[Path, int, str, int]]:
    """``(path, digit, speaker, take)`` of every ``{digit}_{speaker}_{take}.wav`` in ``folder``,
    sorted by digit, speaker, then take (as a number), so the order never depends on the file
    system. Another ``.wav`` name is a ``ValueError`` naming it."""
    found = []
    for path in folder.glob("*.wav"):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(
                f"{path} does not follow FSDD's file naming {{digit}}_{{speaker}}_{{take}}.wav"
            )
        found.append((path, int(match[1]), match[2], int(match[3])))
    return sorted(found, key=lambda r: (r[1], r[2], r[3]))


@register_dataset("fsdd")
def load_fsdd(
    *,
    data_dir: Path | None,
    download: bool,
    val_fraction: float,
    seed: int,
    train_size: int | None,
    input: Input = "logmel",
    split: Literal["official", "speaker"] = "official",
    test_speaker: str | None = None,
    mels: int = N_MELS,
    hop_ms: int = HOP_MS,
) -> DataBundle:
    """3000 recordings of the spoken digits 0-9 by 6 speakers, 50 takes each, as one of two inputs.

    ``input="logmel"``: log-mel spectrograms of shape (1, mels, 1 + 1000 // hop_ms), by default
    (1, 64, 101) (64 bands, 101 frames every 10 ms; ``mels`` in [8, 64], ``hop_ms`` in [1, 32],
    the 32 ms window), so the zoo's CIFAR-style ResNets and VGGs apply unchanged; 32 bands every
    20 ms, (1, 32, 51), are a quarter of the positions; ``input="waveform"``: the raw
    signal, shape (1, 8000) (channels, samples), for 1-D models such as ``m5``. Either is
    normalised with one mean and standard deviation over all values of the train split.

    ``split="official"``: takes 0-4 of every speaker and digit (300 recordings) are the test set;
    ``split="speaker"``: every recording of ``test_speaker`` is the test set and the model never
    hears that speaker in training. Validation and the ``train_size`` subset are carved from the
    rest with :func:`~kdscope.data.splits.carve_splits`, stratified by digit.

    Files: ``recordings/*.wav`` (or ``*.wav``) under ``dataset_dir("fsdd", data_dir)``; with
    ``download=True`` and no files there, the repository archive is fetched from GitHub.
    """
    if input not in ("logmel", "waveform"):
        raise ValueError(f"input must be 'logmel' or 'waveform', got {input!r}")
    if split not in ("official", "speaker"):
        raise ValueError(f"split must be 'official' or 'speaker', got {split!r}")
    if split == "official" and test_speaker is not None:
        raise ValueError(
            f"test_speaker={test_speaker!r} needs split='speaker'; the official split "
            f"holds out takes 0-4 of every speaker"
        )
    for name, value, (low, high) in (("mels", mels, MELS_RANGE), ("hop_ms", hop_ms, HOP_MS_RANGE)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    if input == "waveform" and (mels, hop_ms) != (N_MELS, HOP_MS):
        raise ValueError(
            f"mels={mels} and hop_ms={hop_ms} shape log-mel spectrograms; input='waveform' has none"
        )
    recordings = list_recordings(_find_folder(dataset_dir("fsdd", data_dir), download))
    labels = np.array([digit for _, digit, _, _ in recordings], dtype=np.int64)
    speakers = np.array([speaker for _, _, speaker, _ in recordings])
    if split == "speaker":
        known = sorted(set(speakers))
        if test_speaker not in known:
            raise ValueError(
                f"split='speaker' needs test_speaker, one of {', '.join(known)}; got "
                f"{test_speaker!r}"
            )
        is_test = speakers == test_speaker
    else:
        is_test = np.array([take in TEST_TAKES for *_, take in recordings])
    rest, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    train_idx, val_idx = carve_splits(
        labels[rest], val_fraction=val_fraction, seed=seed, train_size=train_size
    )
    order = {"train": rest[train_idx], "val": rest[val_idx], "test": test}

    waves = np.stack([fit_window(read_wav(path)) for path, *_ in recordings])
    if input == "waveform":
        values = waves[:, None]
    else:
        values = log_mel(waves, mels, hop_ms * SAMPLE_RATE // 1000)[:, None]
    train_values = torch.from_numpy(values[order["train"]]).double()
    mean, std = train_values.mean().item(), train_values.std(unbiased=False).item()
    names = [path.name for path, *_ in recordings]

    def build(idx: np.ndarray) -> FloatMemoryDataset:
        x = torch.from_numpy(values[idx]).sub_(mean).div_(std)
        return FloatMemoryDataset(x, torch.from_numpy(labels[idx]), [names[i] for i in idx])

    shape = values.shape[2:] if input == "logmel" else (1, CLIP_SAMPLES)
    return DataBundle(
        name="fsdd",
        train=build(order["train"]),
        val=build(order["val"]),
        test=build(order["test"]),
        num_classes=len(CLASS_NAMES),
        in_channels=1,
        image_size=(int(shape[0]), int(shape[1])),
        class_names=list(CLASS_NAMES),
        mean=(mean,),
        std=(std,),
        inputs="image" if input == "logmel" else "waveform",
        view=input,
    )


def _find_folder(root: Path, download: bool) -> Path:
    candidates = [root / "recordings", root]
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("*.wav")):
            return folder
    if download:
        _download(root)
        return root / "recordings"
    raise DatasetNotFoundError(
        f"FSDD not found: no .wav files in {' or '.join(map(str, candidates))}. Put the "
        f"recordings folder of github.com/Jakobovski/free-spoken-digit-dataset there, pass "
        f"data_dir=<folder holding recordings/>, or pass download=True to fetch it."
    )


def _download(root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        download_and_extract_archive(SOURCE_URL, download_root=tmp)
        extracted = next(Path(tmp).glob("*/recordings"), None)
        if extracted is None:
            raise DatasetNotFoundError(f"{SOURCE_URL} holds no recordings/ folder")
        shutil.move(str(extracted), str(root / "recordings"))
