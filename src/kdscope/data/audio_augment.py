"""Batched audio augmentation on the device: time shift and SpecAugment masks for log-mel
spectrograms, time shift and gain for waveforms.

Like :func:`~kdscope.data.transforms.standard_augment`, each preset is ``augment(x, generator)``:
every example draws its own parameters from ``generator`` (which must live on ``x``'s device), so
the same generator state gives the same batch. Importing this module registers the presets
``"specaugment"`` and ``"waveform"``.
"""

from __future__ import annotations

import torch
from torch import Generator, Tensor

from kdscope.data.transforms import AUGMENTS


def time_shift(x: Tensor, max_shift: int, generator: Generator) -> Tensor:
    """Shift every example along its last (time) axis by its own integer in
    ``[-max_shift, max_shift]`` (positive: later).

    The samples or frames shifted in repeat the edge one; for FSDD, whose recordings are centred
    in zero padding, that edge is silence in every representation (in normalised log-mel space,
    where 0 is the mean energy, zero filling would insert sound).
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    b, t = x.shape[0], x.shape[-1]
    shift = torch.randint(-max_shift, max_shift + 1, (b, 1), generator=generator, device=x.device)
    source = (torch.arange(t, device=x.device) - shift).clamp_(0, t - 1)
    return x.gather(-1, source.view(b, *([1] * (x.dim() - 2)), t).expand_as(x))


def band_masks(
    batch: int, size: int, count: int, max_width: int, generator: Generator, device: torch.device
) -> Tensor:
    """Boolean masks ``(batch, size)``: the union of ``count`` bands per example, each of width
    ``w ~ U{0, ..., max_width}`` starting at ``s ~ U{0, ..., size - w}`` (Park et al. 2019)."""
    if not 0 <= max_width <= size:
        raise ValueError(
            f"max_width must be between 0 and {size} (the axis length), got {max_width}"
        )
    width = torch.rand((batch, count, 1), generator=generator, device=device) * (max_width + 1)
    width = width.long()
    start = torch.rand((batch, count, 1), generator=generator, device=device) * (size - width + 1)
    start = start.long()
    position = torch.arange(size, device=device)
    return ((position >= start) & (position < start + width)).any(1)


def spec_augment(
    x: Tensor,
    generator: Generator,
    *,
    max_shift: int | None = None,
    freq_masks: int = 2,
    max_freq_width: int | None = None,
    time_masks: int = 2,
    max_time_width: int | None = None,
) -> Tensor:
    """Time shift, then SpecAugment frequency and time masking, of log-mel spectrograms
    ``(B, C, n_mels, frames)``.

    Park, Chan, Zhang, Chiu, Zoph, Cubuk and Le 2019, "SpecAugment: A Simple Data Augmentation
    Method for Automatic Speech Recognition", arXiv:1904.08779: ``freq_masks`` bands of
    ``f ~ U{0..F}`` consecutive mel channels and ``time_masks`` bands of ``t ~ U{0..T}``
    consecutive frames are set to 0, which is the mean of the normalised input (as in the paper).

    Deviations: no time warping (the paper finds it the least useful part). The widths are scaled
    to one spoken digit, not taken from the paper's LibriSpeech policies: LD masks up to
    F = 27 of 80 channels and up to 20% of an utterance of several seconds, which on a word of
    about 0.4 s (FSDD's median) would often erase it. Unset widths follow the spectrogram's size,
    so a coarser one (``mels``, ``hop_ms``) is masked over the same fraction of bands and the same
    duration: F = an eighth of the bands (8 of 64), T = a tenth of the frame steps of the 1 s
    window (10 frames, 100 ms, of 101), two masks each. Before masking, every example is shifted
    by up to ``max_shift`` frames (:func:`time_shift`; unset: the same 100 ms).
    """
    if x.dim() != 4:
        raise ValueError(f"expected spectrograms of shape (B, C, F, T), got {tuple(x.shape)}")
    b, _, f, t = x.shape
    tenth = (t - 1) // 10
    x = time_shift(x, tenth if max_shift is None else max_shift, generator)
    freq_width = f // 8 if max_freq_width is None else max_freq_width
    time_width = tenth if max_time_width is None else max_time_width
    freq = band_masks(b, f, freq_masks, freq_width, generator, x.device)
    time = band_masks(b, t, time_masks, time_width, generator, x.device)
    masked = freq[:, None, :, None] | time[:, None, None, :]
    return x.masked_fill(masked, 0.0)


def waveform_augment(
    x: Tensor, generator: Generator, *, max_shift: int = 800, max_gain_db: float = 6.0
) -> Tensor:
    """Time shift by up to ``max_shift`` samples (100 ms at 8 kHz, :func:`time_shift`), then a
    gain of ``g ~ U[-max_gain_db, max_gain_db]`` dB per example, of waveforms ``(B, C, samples)``.

    ``max_gain_db=0`` turns the gain off. The gain multiplies the normalised signal, which equals
    scaling the raw one because the train mean of a waveform is ~0 (-4e-4 for FSDD against a
    standard deviation of 0.04).
    """
    if x.dim() != 3:
        raise ValueError(f"expected waveforms of shape (B, C, samples), got {tuple(x.shape)}")
    if max_gain_db < 0:
        raise ValueError(f"max_gain_db must be >= 0, got {max_gain_db}")
    x = time_shift(x, max_shift, generator)
    gain_db = torch.rand((x.shape[0], 1, 1), generator=generator, device=x.device) * 2 - 1
    return x * torch.pow(10.0, gain_db * (max_gain_db / 20))


AUGMENTS.register("specaugment")(spec_augment)
AUGMENTS.register("waveform")(waveform_augment)
