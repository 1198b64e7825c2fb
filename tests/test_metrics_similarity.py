"""CKA family and distance correlation: reference values, the dcor oracle, properties, bad input."""

import dcor
import numpy as np
import pytest
import torch

from kdscope.metrics import dcor as dc
from kdscope.metrics import matrices as mx
from kdscope.metrics import similarity as sim
from kdscope.metrics.matrices import ZeroVarianceError
from kdscope.metrics.similarity import (
    MinibatchCKA,
    StreamingLinearCKA,
    cka_from_grams,
    linear_cka,
    pairwise_distances,
    rbf_cka,
)

DCOR_FUNCTIONS_2 = [
    "distance_covariance_sqr",
    "distance_covariance",
    "distance_correlation_sqr",
    "distance_correlation",
    "u_distance_covariance_sqr",
    "u_distance_correlation_sqr",
]
DCOR_FUNCTIONS_3 = ["partial_distance_covariance", "partial_distance_correlation"]


@pytest.fixture(scope="module")
def kornblith_data():
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    return x, y


@pytest.fixture(scope="module")
def dcor_data():
    rng = np.random.default_rng(0)
    n = 50
    x = rng.normal(size=(n, 3))
    a = np.array([[1.0, 0.5], [-0.3, 2.0], [0.0, -1.0]])
    y = x @ a + 0.5 * rng.normal(size=(n, 2))
    z = np.sin(x[:, :1]) + x[:, 1:2] ** 2 + 0.3 * rng.normal(size=(n, 1))
    g = rng.normal(size=(n, 4))
    return x, y, z, g


def test_cka_reference_values(kornblith_data):
    x, y = kornblith_data
    assert linear_cka(x, y).item() == pytest.approx(0.5576132566117589, abs=1e-12)
    assert rbf_cka(x, y, threshold=0.5).item() == pytest.approx(0.6548311822614984, abs=1e-12)
    assert linear_cka(x, y, debiased=True).item() == pytest.approx(0.513456489505526, abs=1e-12)
    mb = MinibatchCKA()
    for i in range(4):
        mb.update(x[25 * i : 25 * (i + 1)], y[25 * i : 25 * (i + 1)])
    assert mb.compute() == pytest.approx(0.5132675063590595, abs=1e-12)
    assert (mb.n, mb.batches) == (100, 4)


def test_dcor_reference_values(dcor_data):
    x, y, z, g = dcor_data
    expected = {
        ("distance_correlation", "xy"): 0.844390307434,
        ("distance_correlation_sqr", "xy"): 0.712994991289,
        ("u_distance_correlation_sqr", "xy"): 0.675458223048,
        ("u_distance_covariance_sqr", "xy"): 0.581897119161,
        ("partial_distance_correlation", "xyz"): 0.644106310022,
        ("partial_distance_covariance", "xyz"): 0.446026835553,
        ("partial_distance_correlation", "xgy"): -0.006126483025,
    }
    arrays = {"x": x, "y": y, "z": z, "g": g}
    for (name, args), value in expected.items():
        got = getattr(dc, name)(*(arrays[a] for a in args)).item()
        assert got == pytest.approx(value, abs=1e-11), name


@pytest.mark.parametrize("shape", [(6, 1, 1), (17, 4, 2), (40, 3, 9), (25, (2, 3), 5)])
def test_dcor_oracle(shape):
    n, dx, dy = shape
    rng = np.random.default_rng(n)
    dx_shape = dx if isinstance(dx, tuple) else (dx,)
    x = rng.normal(size=(n, *dx_shape)) * 3.0 + 5.0
    flat_x = x.reshape(n, -1)
    y = np.tanh(flat_x[:, :1]) + rng.normal(size=(n, dy))
    z = flat_x[:, -1:] ** 2 + rng.normal(size=(n, 2))
    for name in DCOR_FUNCTIONS_2:
        ours = getattr(dc, name)(x, y).item()
        assert ours == pytest.approx(float(getattr(dcor, name)(flat_x, y)), abs=1e-9), name
    for name in DCOR_FUNCTIONS_3:
        ours = getattr(dc, name)(x, y, z).item()
        assert ours == pytest.approx(float(getattr(dcor, name)(flat_x, y, z)), abs=1e-9), name


def test_semipartial_is_correlation_of_residual(dcor_data):
    x, y, z, _ = dcor_data
    a, b, c = (mx.u_centered(pairwise_distances(v)) for v in (x, y, z))
    residual = a - mx.u_inner(a, c) / mx.u_inner(c, c) * c
    expected = mx.u_inner(residual, b) / (mx.u_inner(residual, residual) * mx.u_inner(b, b)).sqrt()
    got = dc.semipartial_distance_correlation(x, y, z)
    assert got.item() == pytest.approx(expected.item(), abs=1e-12)
    # Projecting z out of x only: |semi-partial| <= |partial| * sqrt(1 - R*yz^2) <= 1, and differs.
    assert got.item() != pytest.approx(dc.partial_distance_correlation(x, y, z).item(), abs=1e-3)


def test_pdcor_identities(dcor_data):
    x, y, z, _ = dcor_data
    pdcov = dc.partial_distance_covariance
    via_cov = pdcov(x, y, z) / (pdcov(x, x, z) * pdcov(y, y, z)).sqrt()
    assert dc.partial_distance_correlation(x, y, z).item() == pytest.approx(
        via_cov.item(), abs=1e-12
    )
    assert dc.partial_distance_correlation(x, x, z).item() == pytest.approx(1.0, abs=1e-12)
    assert dc.partial_distance_correlation(x, z, z).item() == 0.0
    assert dc.partial_distance_covariance(x, z, z).item() == pytest.approx(0.0, abs=1e-12)


def test_debiased_cka_with_negative_distance_kernel_is_rstar(dcor_data):
    x, y, _, _ = dcor_data
    cka = cka_from_grams(-pairwise_distances(x), -pairwise_distances(y), debiased=True)
    assert cka.item() == pytest.approx(dc.u_distance_correlation_sqr(x, y).item(), abs=1e-12)


def test_independent_samples_dcor_near_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g, dtype=torch.float64)
    y = torch.randn(400, 2, generator=g, dtype=torch.float64)
    assert abs(dc.u_distance_correlation_sqr(x, y).item()) < 0.01
    # The V-statistic is biased upwards: clearly positive on the same data.
    assert dc.distance_correlation_sqr(x, y).item() > 0.01


@pytest.mark.parametrize("cka", [linear_cka, rbf_cka])
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_invariances(cka, debiased):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 8, generator=g, dtype=torch.float64)
    y = torch.relu(x @ torch.randn(8, 5, generator=g, dtype=torch.float64))
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    base = cka(x, y, debiased=debiased).item()
    assert cka(x, x, debiased=debiased).item() == pytest.approx(1.0, abs=1e-12)
    assert cka(x @ q, y, debiased=debiased).item() == pytest.approx(base, abs=1e-10)
    assert cka(7.5 * x, y, debiased=debiased).item() == pytest.approx(base, abs=1e-10)
    assert cka(x + 3.0, y, debiased=debiased).item() == pytest.approx(base, abs=1e-10)


def test_feature_space_and_gram_forms_agree():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    y = x[:, :3] + torch.randn(50, 3, generator=g, dtype=torch.float64)
    gram = cka_from_grams(sim.linear_gram(x), sim.linear_gram(y)).item()
    assert linear_cka(x, y).item() == pytest.approx(gram, abs=1e-12)


def test_biased_cka_inflated_when_features_outnumber_examples():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 500, generator=g, dtype=torch.float64)
    y = torch.randn(20, 500, generator=g, dtype=torch.float64)
    assert linear_cka(x, y).item() > 0.9
    assert abs(linear_cka(x, y, debiased=True).item()) < 0.2


def _song_hsic(k: torch.Tensor, l: torch.Tensor) -> float:  # noqa: E741
    # Song et al.'s unbiased HSIC written directly on uncentred Gram matrices (the pitfall).
    n = k.shape[0]
    k, l = k.clone(), l.clone()  # noqa: E741
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    one = torch.ones(n, 1, dtype=k.dtype)
    value = (
        torch.trace(k @ l)
        + (one.T @ k @ one) * (one.T @ l @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one.T @ k @ l @ one)
    )
    return value.item() / (n * (n - 3))


def test_float32_uncentred_post_relu_pitfall():
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(64, 256, generator=g)) + 10.0
    y = torch.relu(x[:, :128] + 0.5 * torch.randn(64, 128, generator=g)) + 10.0

    def song(a, b):
        k, l = a @ a.T, b @ b.T  # noqa: E741
        # Rounding can leave a self-HSIC at 0 or below (seen with some BLAS thread counts): no CKA.
        denominator = _song_hsic(k, k) * _song_hsic(l, l)
        return _song_hsic(k, l) / denominator**0.5 if denominator > 0 else float("nan")

    exact = cka_from_grams(sim.linear_gram(x.double()), sim.linear_gram(y.double()), True).item()
    assert not abs(song(x, y) - exact) <= 0.1  # the naive float32 formula collapses (or is NaN)
    assert linear_cka(x, y, debiased=True).item() == pytest.approx(exact, abs=1e-9)
    mb = MinibatchCKA()  # float32 product of centred columns, float64 afterwards
    mb.update(x, y)
    assert mb.compute() == pytest.approx(exact, abs=1e-7)


def test_minibatch_cka_single_batch_is_debiased_cka_and_skips_small_batches():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(43, 7, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(7, 4, generator=g, dtype=torch.float64))
    mb = MinibatchCKA()
    mb.update(x[:40], y[:40])
    mb.update(x[40:], y[40:])
    assert mb.compute() == pytest.approx(
        linear_cka(x[:40], y[:40], debiased=True).item(), abs=1e-12
    )
    assert (mb.n, mb.skipped_examples) == (40, 3)
    with pytest.raises(ValueError, match="no batch"):
        MinibatchCKA("layer3").compute()


def test_streaming_cka_equals_full_biased_cka_with_offsets():
    g = torch.Generator().manual_seed(5)
    x = torch.relu(torch.randn(300, 12, generator=g, dtype=torch.float64)) + 1e4
    y = torch.relu(x[:, :6] - 1e4 + torch.randn(300, 6, generator=g, dtype=torch.float64)) - 50
    stream = StreamingLinearCKA()
    for start, stop in [(0, 1), (1, 101), (101, 137), (137, 300)]:
        stream.update(x[start:stop], y[start:stop])
    assert stream.n == 300
    assert stream.compute() == pytest.approx(linear_cka(x, y).item(), abs=1e-10)


def test_pairwise_distances_and_gradients():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64)
    x = torch.cat([x, x[:2]])  # duplicate rows: zero off-diagonal distances
    d = pairwise_distances(x)
    assert torch.allclose(d, torch.cdist(x, x), atol=1e-12)
    assert torch.equal(d.diagonal(), torch.zeros(11, dtype=torch.float64))
    leaf = x.clone().requires_grad_(True)
    y = torch.randn(11, 2, generator=g, dtype=torch.float64)
    z = torch.randn(11, 3, generator=g, dtype=torch.float64)
    for fn in (dc.distance_correlation, dc.u_distance_correlation_sqr, linear_cka, rbf_cka):
        leaf.grad = None
        fn(leaf, y).backward()
        assert torch.isfinite(leaf.grad).all(), fn.__name__
    leaf.grad = None
    dc.semipartial_distance_correlation(leaf, y, z).backward()
    assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    smooth = pairwise_distances(x, eps=1e-12)
    assert torch.allclose(smooth, d, atol=1e-5)


def test_gradcheck_rstar_and_cka():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(7, 2, generator=g, dtype=torch.float64)
    z = torch.randn(7, 2, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: dc.u_distance_correlation_sqr(a, y), (x,))
    assert torch.autograd.gradcheck(lambda a: dc.semipartial_distance_correlation(a, y, z), (x,))
    assert torch.autograd.gradcheck(lambda a: linear_cka(a, y, debiased=True), (x,))


def test_float32_tensor_and_numpy_inputs_agree():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(20, 5)), rng.normal(size=(20, 3))
    from_numpy = dc.distance_correlation(x, y)
    from_torch = dc.distance_correlation(torch.from_numpy(x), torch.from_numpy(y))
    assert from_numpy.dtype == torch.float64
    assert from_numpy.item() == from_torch.item()


def test_bad_input():
    x, y = torch.randn(10, 3), torch.randn(9, 3)
    with pytest.raises(ValueError, match="same number of examples, got 10 and 9"):
        linear_cka(x, y)
    with pytest.raises(ValueError, match="n >= 4"):
        linear_cka(x[:3], x[:3], debiased=True)
    with pytest.raises(ValueError, match="n >= 4"):
        dc.u_distance_correlation_sqr(x[:3], x[:3])
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="y has 1 NaN or inf"):
        dc.distance_correlation(x, bad)
    with pytest.raises(ZeroVarianceError, match="y is constant"):
        linear_cka(x, torch.ones(10, 3))
    with pytest.raises(ZeroVarianceError, match="z is constant"):
        dc.partial_distance_correlation(x, x + 1, torch.zeros(10, 1))
    with pytest.raises(ValueError, match="threshold must be > 0"):
        rbf_cka(x, x, threshold=0)
    with pytest.raises(ValueError, match="scalar"):
        linear_cka(torch.tensor(1.0), torch.tensor(2.0))
    mb = MinibatchCKA("layer2")
    mb.update(torch.ones(8, 3), torch.randn(8, 3))
    with pytest.raises(ZeroVarianceError, match="layer2: features x have zero variance"):
        mb.compute()


def _u_inner_triple(k, l):  # noqa: E741
    ku, lu = mx.u_centered(k), mx.u_centered(l)
    return torch.stack([mx.u_inner(ku, lu), mx.u_inner(ku, ku), mx.u_inner(lu, lu)])


def test_hsic1_from_grams_and_features_equal_the_u_centred_inner_products():
    g = torch.Generator().manual_seed(9)
    x = torch.relu(torch.randn(30, 12, generator=g, dtype=torch.float64))
    y = torch.tanh(x[:, :5]) + torch.randn(30, 5, generator=g, dtype=torch.float64)
    expected = _u_inner_triple(sim.linear_gram(x), sim.linear_gram(y))
    xc, yc = x - x.mean(0), y - y.mean(0)
    torch.testing.assert_close(sim.hsic1_from_features(xc, yc), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        sim.hsic1_from_grams(sim.linear_gram(x), sim.linear_gram(y)), expected, rtol=1e-12, atol=0
    )
    # Not symmetric (as float32 rounding can leave a Gram): still the U-centred value.
    k = sim.linear_gram(x) + 0.01 * torch.randn(30, 30, generator=g, dtype=torch.float64)
    l = sim.linear_gram(y)  # noqa: E741
    torch.testing.assert_close(
        sim.hsic1_from_grams(k, l), _u_inner_triple(k, l), rtol=1e-12, atol=0
    )


# float32 d x d products, float64 d x d products, float32 Grams: (cost of the products over the
# Grams' cost, tolerance against float64).
MINIBATCH_PATHS = {
    (600, 256): ((1 / 3, 1), 1e-6),
    (300, 16): ((0, 1 / 3), 1e-12),
    (64, 256): ((1, 9), 1e-7),
}


@pytest.mark.parametrize("n, d", list(MINIBATCH_PATHS))
def test_minibatch_cka_paths_stay_exact_on_uncentred_post_relu_float32(n, d):
    (low, high), tolerance = MINIBATCH_PATHS[n, d]
    assert low <= sim._feature_space_cost(n, d, d // 2) < high
    g = torch.Generator().manual_seed(n)
    x = torch.relu(torch.randn(n, d, generator=g)) + 10.0
    y = torch.relu(x[:, : d // 2] - 10.0 + 0.5 * torch.randn(n, d // 2, generator=g)) + 10.0
    exact = cka_from_grams(sim.linear_gram(x.double()), sim.linear_gram(y.double()), True).item()
    mb = MinibatchCKA()
    mb.update(x, y)
    assert mb.compute() == pytest.approx(exact, abs=tolerance)
    # The Grams' way to the same sums: U-centred matrices, or Song's formula on the Grams.
    by_grams, by_u_centred = MinibatchCKA(), MinibatchCKA()
    by_grams.update_grams(sim.linear_gram(x), sim.linear_gram(y))
    by_u_centred.update_centred(
        mx.u_centered(sim.linear_gram(x)), mx.u_centered(sim.linear_gram(y))
    )
    assert by_grams.compute() == pytest.approx(by_u_centred.compute(), abs=1e-12)
    assert by_grams.compute() == pytest.approx(exact, abs=1e-7)
    assert (by_grams.n, by_grams.batches) == (n, 1)


def test_pairwise_distances_gradient():
    g = torch.Generator().manual_seed(10)
    x = (3.0 * torch.randn(8, 5, generator=g, dtype=torch.float64) + 7.0).requires_grad_(True)
    assert torch.autograd.gradcheck(pairwise_distances, (x,))
    assert torch.autograd.gradcheck(lambda a: pairwise_distances(a, eps=1e-3), (x,))
    weights = torch.randn(8, 8, generator=g, dtype=torch.float64)
    (ours,) = torch.autograd.grad((pairwise_distances(x) * weights).sum(), x)
    (reference,) = torch.autograd.grad((torch.cdist(x, x) * weights).sum(), x)
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-12)


def test_large_finite_values_are_not_taken_for_inf():
    x = torch.full((4, 3), 3e38)  # float32 entries whose sum overflows
    x[0, 0] = 1e38
    assert mx.as_features(x, float64=False).dtype == torch.float32
