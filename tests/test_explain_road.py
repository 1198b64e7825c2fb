import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.road import NoisyLinearImputer

from kdscope.explain.road import road_impute, road_keep_top, road_remove_top, top_pixels

SOLVERS = ["direct", "cg"]


def dense_oracle(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The imputation equations written out one pixel at a time and solved densely."""
    c, h, w = image.shape
    removed = [(y, x) for y in range(h) for x in range(w) if not keep[y, x]]
    index = {p: i for i, p in enumerate(removed)}
    a = np.zeros((len(removed), len(removed)))
    b = np.zeros((len(removed), c))
    for i, (y, x) in enumerate(removed):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ny, nx = y + dy, x + dx
                if (dy, dx) == (0, 0) or not (0 <= ny < h and 0 <= nx < w):
                    continue
                weight = 1 / 6 if dy == 0 or dx == 0 else 1 / 12
                a[i, i] += weight
                if keep[ny, nx]:
                    b[i] += weight * image[:, ny, nx]
                else:
                    a[i, index[(ny, nx)]] -= weight
    out = image.copy()
    solution = np.linalg.solve(a, b)
    for i, (y, x) in enumerate(removed):
        out[:, y, x] = solution[i]
    return out


@pytest.mark.parametrize("solver", SOLVERS)
def test_reference_values_from_the_spec(solver):
    img = torch.sin(torch.arange(108, dtype=torch.float64).reshape(1, 3, 6, 6) / 7)
    keep = torch.ones(1, 6, 6, dtype=torch.bool)
    keep[0, 2:4, 2:4] = False
    keep[0, 0, 0] = False
    out = road_impute(img, keep, noise_std=0, solver=solver)[0]
    expected = [0.60945714, 0.55689484, 0.11870587, 0.0085426]
    np.testing.assert_allclose(out[0, 2:4, 2:4].flatten(), expected, atol=1e-6)
    assert out[0, 0, 0].item() == pytest.approx(0.52763307, abs=1e-6)
    assert out[2, 3, 3].item() == pytest.approx(0.47839421, abs=1e-6)


# pytorch_grad_cam's imputer passes torch tensors to numpy, which warns under numpy 2.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("solver", SOLVERS)
def test_matches_dense_solve_and_pytorch_grad_cam_on_random_masks(solver):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 2, 9, 11, generator=g, dtype=torch.float64)
    keep = (
        torch.rand(5, 9, 11, generator=g) < torch.tensor([0.1, 0.3, 0.5, 0.7, 0.95])[:, None, None]
    )
    keep[0, 4, 5] = True  # at least one kept pixel even at 10%
    out = road_impute(images, keep, noise_std=0, solver=solver)
    imputer = NoisyLinearImputer(noise=0)
    for i in range(5):
        expected = dense_oracle(images[i].numpy(), keep[i].numpy())
        np.testing.assert_allclose(
            out[i].numpy(), expected, atol=1e-9 if solver == "direct" else 1e-6
        )
        theirs = imputer(images[i].float(), keep[i].float())
        np.testing.assert_allclose(out[i].numpy(), theirs.numpy(), atol=1e-5)


@pytest.mark.parametrize("solver", SOLVERS)
def test_keep_all_is_the_identity(solver):
    images = torch.rand(3, 3, 8, 8)
    keep = torch.ones(3, 8, 8, dtype=torch.bool)
    assert torch.equal(road_impute(images, keep, solver=solver), images)
    maps = torch.rand(3, 8, 8)
    assert torch.equal(road_keep_top(images, maps, 1.0, solver=solver), images)
    assert torch.equal(road_remove_top(images, maps, 0.0, solver=solver), images)


def test_noise_is_added_to_imputed_pixels_only_and_is_reproducible():
    images = torch.rand(4, 1, 32, 32, dtype=torch.float64)
    keep = torch.rand(4, 32, 32) < 0.5
    clean = road_impute(images, keep, noise_std=0)
    noisy = road_impute(images, keep, 0.05, torch.Generator().manual_seed(3))
    again = road_impute(images, keep, 0.05, torch.Generator().manual_seed(3))
    assert torch.equal(noisy, again)
    kept = keep[:, None]
    assert torch.equal(noisy[kept], images[kept])
    noise = (noisy - clean)[~kept]
    assert noise.std().item() == pytest.approx(0.05, rel=0.1)
    assert abs(noise.mean().item()) < 0.01


def test_keep_top_keeps_exactly_the_highest_ranked_pixels():
    images = torch.rand(2, 3, 6, 6)
    maps = torch.randperm(72).reshape(2, 6, 6).float()
    kept = road_keep_top(images, maps, 0.25, noise_std=0)
    top = maps.flatten(1) >= maps.flatten(1).topk(9, dim=1).values[:, -1:]
    top = top.reshape(2, 1, 6, 6).expand_as(images)
    assert torch.equal(kept[top], images[top])
    assert not torch.isclose(kept[~top], images[~top]).all()
    removed = road_remove_top(images, maps, 0.25, noise_std=0)
    assert torch.equal(removed[~top], images[~top])


def test_top_pixels_counts_sums_channels_and_breaks_ties_at_random():
    maps = torch.rand(3, 2, 10, 10)
    mask = top_pixels(maps, 0.3)
    assert mask.shape == (3, 10, 10) and (mask.flatten(1).sum(1) == 30).all()
    summed = maps.sum(1).flatten(1)
    threshold = summed.topk(30, dim=1).values[:, -1:]
    # The 1e-4 tie-break may swap pixels closer than 1e-4, nothing else.
    assert ((summed >= threshold + 1e-4) <= mask.flatten(1)).all()
    flat = torch.zeros(1, 10, 10)
    a = top_pixels(flat, 0.5, torch.Generator().manual_seed(0))
    b = top_pixels(flat, 0.5, torch.Generator().manual_seed(1))
    assert a.sum() == 50 and not torch.equal(a, b)
    assert not torch.equal(a.flatten()[:50], torch.ones(50, dtype=torch.bool))


def test_cg_matches_direct_on_large_holes():
    images = torch.rand(2, 1, 28, 28)
    keep = torch.zeros(2, 28, 28, dtype=torch.bool)
    keep[:, :, :3] = True  # one solid hole of 28 x 25 pixels
    keep[1, 27, 27] = True
    direct = road_impute(images, keep, noise_std=0, solver="direct")
    cg = road_impute(images, keep, noise_std=0, solver="cg")
    assert torch.allclose(direct, cg, atol=1e-5)


def test_errors():
    images = torch.rand(2, 1, 4, 4)
    keep = torch.ones(2, 4, 4, dtype=torch.bool)
    keep[1] = False
    with pytest.raises(ValueError, match=r"images \[1\] keep none"):
        road_impute(images, keep)
    with pytest.raises(ValueError, match="keep_mask must be"):
        road_impute(images, torch.ones(2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="solver"):
        road_impute(images, torch.ones(2, 4, 4, dtype=torch.bool), solver="lu")
    with pytest.raises(ValueError, match=r"fraction kept must be in \(0, 1\]"):
        road_keep_top(images, torch.rand(2, 4, 4), 0.0)
    with pytest.raises(ValueError, match=r"fraction removed must be in \[0, 1\)"):
        road_remove_top(images, torch.rand(2, 4, 4), 1.0)
