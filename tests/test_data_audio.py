"""FSDD: WAV decoding, the log-mel front end, splits, paired views and batched audio augmentation.

Most tests run on small WAV folders written here; those marked by ``real_fsdd`` read the shared
copy of the dataset and skip where it is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("soundfile", reason="FSDD needs soundfile (pip install soundfile)")
pytest.importorskip("librosa", reason="FSDD needs librosa (pip install librosa)")

import librosa  # noqa: E402
import soundfile as sf  # noqa: E402

from kdscope.data import audio, audio_augment  # noqa: E402
from kdscope.data.registry import DatasetNotFoundError, dataset_dir, load_data  # noqa: E402
from kdscope.data.transforms import get_augment  # noqa: E402

SPEAKERS = ("alice", "bob")
TAKES = 7


def tone(freq: float, seconds: float, rate: int = audio.SAMPLE_RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_fsdd(tmp_path_factory):
    """10 digits x 2 speakers x 7 takes of 16-bit 8 kHz tones (300 + 200 * digit Hz) of 0.3-1.4 s,
    the longest ones cropped to the 1 s window."""
    root = tmp_path_factory.mktemp("fsdd")
    folder = root / "recordings"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for digit in range(10):
        for s, speaker in enumerate(SPEAKERS):
            for take in range(TAKES):
                wave = tone(300 + 200 * digit + 20 * s, rng.uniform(0.3, 1.4))
                sf.write(folder / f"{digit}_{speaker}_{take}.wav", wave, 8000, subtype="PCM_16")
    return root


def real_fsdd():
    folder = dataset_dir("fsdd", None) / "recordings"
    if not folder.is_dir():
        pytest.skip(f"FSDD recordings not found in {folder} (set KDSCOPE_DATA)")
    return folder.parent


# --- decoding -----------------------------------------------------------------------------------


def test_read_wav_resamples_and_mixes_down(tmp_path):
    expected = tone(440, 0.5)
    # 16 kHz stereo 24-bit: left twice the tone, right silent, so the channel mean is the tone.
    stereo = np.stack([2 * tone(440, 0.5, 16000), np.zeros(8000, np.float32)], axis=1)
    sf.write(tmp_path / "x.wav", stereo, 16000, subtype="PCM_24")
    got = audio.read_wav(tmp_path / "x.wav")
    assert got.dtype == np.float32 and got.shape == expected.shape
    inner = slice(100, -100)  # the resampling filter's edges
    assert np.abs(got[inner] - expected[inner]).max() < 2e-3
    # 8 kHz mono 16-bit is read exactly (to 16-bit quantisation).
    sf.write(tmp_path / "y.wav", expected, 8000, subtype="PCM_16")
    assert np.abs(audio.read_wav(tmp_path / "y.wav") - expected).max() <= 1 / 32768


def test_read_wav_names_empty_and_non_wav_files(tmp_path):
    (tmp_path / "0_a_0.wav").write_bytes(b"")
    with pytest.raises(ValueError, match=r"0_a_0\.wav is an empty file"):
        audio.read_wav(tmp_path / "0_a_0.wav")
    (tmp_path / "1_a_0.wav").write_text("not audio at all")
    with pytest.raises(ValueError, match=r"1_a_0\.wav is not a readable WAV file"):
        audio.read_wav(tmp_path / "1_a_0.wav")
    sf.write(tmp_path / "2_a_0.wav", tone(440, 0.1), 8000, format="FLAC")
    with pytest.raises(ValueError, match=r"2_a_0\.wav is a FLAC file, not a WAV file"):
        audio.read_wav(tmp_path / "2_a_0.wav")
    sf.write(tmp_path / "3_a_0.wav", np.zeros((0, 1), np.float32), 8000, subtype="PCM_16")
    with pytest.raises(ValueError, match=r"3_a_0\.wav is an empty WAV file"):
        audio.read_wav(tmp_path / "3_a_0.wav")


def test_fit_window_centres_pads_and_crops():
    assert audio.fit_window(np.array([1.0, 2.0, 3.0]), 6).tolist() == [0, 1, 2, 3, 0, 0]
    assert audio.fit_window(np.arange(7.0), 3).tolist() == [2, 3, 4]
    assert audio.fit_window(np.arange(4.0), 4).tolist() == [0, 1, 2, 3]


def test_list_recordings_sorts_by_number_and_refuses_other_names(tmp_path):
    for name in ("1_b_10.wav", "1_b_9.wav", "0_z_3.wav", "1_a_0.wav"):
        (tmp_path / name).write_bytes(b"")
    got = [(d, s, t) for _, d, s, t in audio.list_recordings(tmp_path)]
    assert got == [(0, "z", 3), (1, "a", 0), (1, "b", 9), (1, "b", 10)]
    (tmp_path / "ten_a_0.wav").write_bytes(b"")
    with pytest.raises(ValueError, match=r"ten_a_0\.wav does not follow FSDD's file naming"):
        audio.list_recordings(tmp_path)


def test_log_mel_matches_librosa_and_puts_a_tone_in_its_band():
    rng = np.random.default_rng(1)
    waves = np.stack([audio.fit_window(tone(1000, 0.6)), 0.1 * rng.standard_normal(8000)])
    got = audio.log_mel(waves.astype(np.float32))
    assert got.shape == (2, audio.N_MELS, audio.FRAMES) == (2, 64, 101)
    reference = librosa.feature.melspectrogram(
        y=waves, sr=8000, n_fft=256, hop_length=80, n_mels=64, fmin=0, fmax=4000, power=2.0
    )
    assert np.abs(got - np.log(reference + 1e-6)).max() < 1e-3
    centres = librosa.mel_frequencies(n_mels=64 + 2, fmin=0, fmax=4000)[1:-1]
    loudest = got[0, :, 50].argmax()  # the middle frame is inside the tone
    assert abs(centres[loudest] - 1000) < 60
    # Silence (the padding) is the log offset.
    assert np.allclose(got[0, :, 0], np.log(1e-6), atol=1e-3)


def test_log_mel_bands_and_hop_are_options_that_match_librosa(tiny_fsdd):
    waves = np.stack([audio.fit_window(tone(1000, 0.6)), audio.fit_window(tone(300, 0.4))])
    got = audio.log_mel(waves.astype(np.float32), n_mels=32, hop_length=160)
    assert got.shape == (2, 32, 51)
    reference = librosa.feature.melspectrogram(
        y=waves, sr=8000, n_fft=256, hop_length=160, n_mels=32, fmin=0, fmax=4000, power=2.0
    )
    assert np.abs(got - np.log(reference + 1e-6)).max() < 1e-3
    data = load_data("fsdd", data_dir=tiny_fsdd, mels=32, hop_ms=20)
    assert data.image_size == (32, 51) and data.train[0][0].shape == (1, 32, 51)
    for option, value, accepted in [
        ("mels", 65, r"\[8, 64\]"),
        ("mels", 4.0, r"\[8, 64\]"),
        ("hop_ms", 0, r"\[1, 32\]"),
        ("hop_ms", 40, r"\[1, 32\]"),
    ]:
        with pytest.raises(ValueError, match=rf"{option} must be an integer in {accepted}, got"):
            load_data("fsdd", data_dir=tiny_fsdd, **{option: value})
    with pytest.raises(ValueError, match="mels=32 and hop_ms=10 shape log-mel spectrograms"):
        load_data("fsdd", data_dir=tiny_fsdd, input="waveform", mels=32)


# --- splits and views -----------------------------------------------------------------------------


def test_fsdd_official_split(tiny_fsdd):
    data = load_data("fsdd", data_dir=tiny_fsdd, val_fraction=0.25)
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 100)
    assert all(int(f.rsplit("_", 1)[1][:-4]) < 5 for f in data.test.files)
    assert all(int(f.rsplit("_", 1)[1][:-4]) >= 5 for f in data.train.files + data.val.files)
    assert not set(data.train.files) & set(data.val.files)
    assert data.class_names[:3] == ["zero", "one", "two"] and data.num_classes == 10
    assert data.in_channels == 1 and data.image_size == (64, 101)
    x, y, index = data.train[3]
    assert x.shape == (1, 64, 101) and x.dtype == torch.float32 and index == 3
    assert y == int(data.train.files[3][0])
    # Normalised with the train split's statistics: train comes out standardised.
    values, labels = data.train.tensors()
    assert abs(values.mean().item()) < 1e-4 and abs(values.std(unbiased=False).item() - 1) < 1e-4
    assert np.bincount(labels.numpy()).tolist() == [3] * 10
    batch, batch_labels, batch_index = data.val.__getitems__([4, 0])
    assert torch.equal(batch[1], data.val[0][0]) and batch_index.tolist() == [4, 0]
    assert batch_labels.tolist() == [data.val[4][1], data.val[0][1]]


def test_fsdd_speaker_split_holds_out_one_speaker(tiny_fsdd):
    data = load_data("fsdd", data_dir=tiny_fsdd, split="speaker", test_speaker="bob")
    assert len(data.test) == 10 * TAKES and all("_bob_" in f for f in data.test.files)
    assert not any("_bob_" in f for f in data.train.files + data.val.files)
    assert len(data.train) + len(data.val) == 10 * TAKES
    with pytest.raises(ValueError, match="test_speaker, one of alice, bob; got 'carol'"):
        load_data("fsdd", data_dir=tiny_fsdd, split="speaker", test_speaker="carol")
    with pytest.raises(ValueError, match="test_speaker='bob' needs split='speaker'"):
        load_data("fsdd", data_dir=tiny_fsdd, test_speaker="bob")
    with pytest.raises(ValueError, match="input must be 'logmel' or 'waveform', got 'mfcc'"):
        load_data("fsdd", data_dir=tiny_fsdd, input="mfcc")


def test_waveform_and_logmel_views_index_the_same_examples(tiny_fsdd):
    spec = load_data("fsdd", data_dir=tiny_fsdd, seed=3, train_size=20)
    wave = load_data("fsdd", data_dir=tiny_fsdd, seed=3, train_size=20, input="waveform")
    assert wave.image_size == (1, 8000)
    for split in ("train", "val", "test"):
        a, b = getattr(spec, split), getattr(wave, split)
        assert a.files == b.files
        assert torch.equal(a.labels, b.labels)
        # The same recording behind each index: the waveform's log-mel is the spectrogram.
        raw = b.values[:, 0].numpy() * wave.std[0] + wave.mean[0]
        expected = (audio.log_mel(raw) - spec.mean[0]) / spec.std[0]
        assert np.abs(a.values[:, 0].numpy() - expected).max() < 1e-3


def test_missing_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no .wav files in .*recordings"):
        load_data("fsdd", data_dir=tmp_path)


def test_real_fsdd_splits_and_zoo_models_apply():
    from kdscope.models import create_model

    root = real_fsdd()
    spec = load_data("fsdd", data_dir=root)
    assert (len(spec.train), len(spec.val), len(spec.test)) == (2430, 270, 300)
    wave = load_data("fsdd", data_dir=root, input="waveform")
    assert spec.train.files == wave.train.files and torch.equal(spec.test.labels, wave.test.labels)
    held_out = load_data("fsdd", data_dir=root, split="speaker", test_speaker="theo")
    assert len(held_out.test) == 500 and len(held_out.train) + len(held_out.val) == 2500
    x, _, _ = spec.train.__getitems__(list(range(4)))
    for name in ("resnet8", "vgg8"):
        with torch.no_grad():
            assert create_model(name, 10, in_channels=1).eval()(x).shape == (4, 10)


# --- augmentation -------------------------------------------------------------------------------


def test_time_shift_moves_each_example_and_repeats_the_edge():
    x = torch.arange(6.0).repeat(3, 1, 1)  # (3, 1, 6)
    g = torch.Generator().manual_seed(0)
    shifted = audio_augment.time_shift(x, 2, g)
    shifts = torch.randint(-2, 3, (3, 1), generator=torch.Generator().manual_seed(0))
    for row, s in zip(shifted[:, 0], shifts[:, 0].tolist(), strict=True):
        assert row.tolist() == [min(max(t - s, 0), 5) for t in range(6)]
    assert torch.equal(audio_augment.time_shift(x, 0, g), x)


def test_band_masks_are_bands_of_bounded_width_reaching_both_ends():
    g = torch.Generator().manual_seed(0)
    masks = audio_augment.band_masks(2000, 20, 1, 5, g, torch.device("cpu"))
    widths = masks.sum(1)
    assert widths.max() == 5 and widths.min() == 0
    for row in masks[widths > 0]:
        on = row.nonzero()[:, 0]
        assert on[-1] - on[0] + 1 == len(on)  # one contiguous band
    assert masks[:, 0].any() and masks[:, -1].any()
    with pytest.raises(ValueError, match="max_width must be between 0 and 20"):
        audio_augment.band_masks(1, 20, 1, 21, g, torch.device("cpu"))


def test_spec_augment_masks_to_zero_within_its_budgets_and_is_reproducible():
    x = torch.randn(64, 1, 64, 101) + 5  # no true zeros
    out = audio_augment.spec_augment(x, torch.Generator().manual_seed(1), max_shift=0)
    again = audio_augment.spec_augment(x, torch.Generator().manual_seed(1), max_shift=0)
    other = audio_augment.spec_augment(x, torch.Generator().manual_seed(2), max_shift=0)
    assert torch.equal(out, again) and not torch.equal(out, other)
    zero = out == 0
    kept = ~zero
    assert torch.equal(out[kept], x[kept])  # nothing but masking without a shift
    masked_bands = zero.all(3)[:, 0].sum(1)  # mel bands masked across all frames
    masked_frames = zero.all(2)[:, 0].sum(1)
    assert masked_bands.max() <= 2 * 8 and masked_frames.max() <= 2 * 10
    assert masked_bands.float().mean() > 2 and masked_frames.float().mean() > 2
    assert (zero == (zero.all(3, keepdim=True) | zero.all(2, keepdim=True))).all()
    assert get_augment("specaugment") is audio_augment.spec_augment
    with pytest.raises(ValueError, match=r"expected spectrograms of shape \(B, C, F, T\)"):
        audio_augment.spec_augment(torch.zeros(2, 8000), torch.Generator())


def test_waveform_augment_gain_is_bounded_and_reproducible():
    x = torch.randn(256, 1, 8000)
    out = audio_augment.waveform_augment(x, torch.Generator().manual_seed(0), max_shift=0)
    gain = out[:, 0, 0] / x[:, 0, 0]
    assert torch.allclose(out, gain.view(-1, 1, 1) * x, rtol=1e-5)
    db = 20 * gain.log10()
    assert db.min() >= -6 - 1e-4 and db.max() <= 6 + 1e-4 and db.max() - db.min() > 10
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(audio_augment.waveform_augment(x, g1), audio_augment.waveform_augment(x, g2))
    assert torch.equal(audio_augment.waveform_augment(x, g1, max_shift=0, max_gain_db=0), x)
    assert get_augment("waveform") is audio_augment.waveform_augment


def test_spec_augment_widths_follow_the_spectrogram_size():
    x = torch.randn(256, 1, 64, 101) + 5
    explicit = dict(max_shift=10, max_freq_width=8, max_time_width=10)
    default = audio_augment.spec_augment(x, torch.Generator().manual_seed(3))
    assert torch.equal(
        default, audio_augment.spec_augment(x, torch.Generator().manual_seed(3), **explicit)
    )
    coarse = torch.randn(256, 1, 32, 51) + 5  # mels=32, hop_ms=20: the same 1 s window
    out = audio_augment.spec_augment(coarse, torch.Generator().manual_seed(3), max_shift=0)
    zero = out == 0
    masked_bands = zero.all(3)[:, 0].sum(1)
    masked_frames = zero.all(2)[:, 0].sum(1)
    assert masked_bands.max() <= 2 * 4 and masked_frames.max() <= 2 * 5
    assert (
        masked_bands.max() > 2 * 2 and masked_frames.max() > 2 * 3
    )  # not the 64 x 101 widths halved twice
    same = dict(max_shift=5, max_freq_width=4, max_time_width=5)
    assert torch.equal(
        audio_augment.spec_augment(coarse, torch.Generator().manual_seed(4)),
        audio_augment.spec_augment(coarse, torch.Generator().manual_seed(4), **same),
    )
