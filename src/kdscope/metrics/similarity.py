"""Representation similarity: the CKA family (Kornblith et al. 2019: linear, RBF, debiased,
minibatch, streaming); the checks and centring it shares with distance correlation are in
:mod:`kdscope.metrics.matrices`.

Every function takes torch tensors or numpy arrays of shape (n, ...) (higher-rank features are
flattened per example), computes in float64 and returns a 0-dim float64 tensor that carries
gradients when its inputs do. Float64 throughout because the centring steps subtract large, nearly
equal numbers (metrics.md, pitfalls). Constant inputs raise :class:`ZeroVarianceError`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdscope.metrics.matrices import (
    ArrayLike,
    ZeroVarianceError,
    as_features,
    check_pair,
    check_varies,
    double_centered,
    matrix_dot,
    pairwise_distances,
    u_centered,
    u_inner,
)


def _median(values: Tensor) -> Tensor:
    # numpy's median (mean of the two middle values); torch.quantile refuses > 2^24 elements.
    flat = values.reshape(-1)
    k = flat.numel()
    low = flat.kthvalue((k + 1) // 2).values
    high = flat.kthvalue(k // 2 + 1).values
    return (low + high) / 2


def _centred(x: Tensor) -> Tensor:
    # Exact enough in float32: an entry within a factor 2 of its column mean (large offsets)
    # subtracts exactly (Sterbenz), and the mean's own rounding is a per-column constant, which
    # U-centring and double centring ignore.
    return x - x.mean(0, keepdim=True)


def linear_gram(x: Tensor) -> Tensor:
    """Float64 K = Xc Xc^T, columns centred first (same CKA, far less cancellation than X X^T).

    The product keeps the input's precision: once the columns are centred, a float32 product
    moves CKA by ~1e-8 at most on post-ReLU features (tested) and halves the cost of the
    Evaluator's largest step; everything after it is float64.
    """
    x = _centred(x)
    return (x @ x.T).double()


def rbf_gram(x: Tensor, threshold: float = 1.0) -> Tensor:
    """K_ij = exp(-||x_i - x_j||^2 / (2 t^2 median(||x_k - x_l||^2))), median over all n^2 pairs.

    The bandwidth rule (threshold t as a fraction of the median distance, diagonal included in the
    median) is that of Kornblith et al.'s reference notebook.
    """
    sq = pairwise_distances(x).pow(2)
    median = _median(sq.detach())
    if median.item() == 0:
        raise ZeroVarianceError("the median squared distance is 0: the RBF bandwidth is undefined")
    return torch.exp(-sq / (2 * threshold**2 * median))


def cka_from_grams(k: Tensor, l: Tensor, debiased: bool = False) -> Tensor:  # noqa: E741
    """CKA of two n x n Gram matrices: biased (double centring) or debiased (U-centring, HSIC_1)."""
    if debiased:
        ku, lu = u_centered(k), u_centered(l)
        return _debiased_ratio(u_inner(ku, lu), u_inner(ku, ku), u_inner(lu, lu))
    kc, lc = double_centered(k), double_centered(l)
    return matrix_dot(kc, lc) / (matrix_dot(kc, kc) * matrix_dot(lc, lc)).sqrt()


def _debiased_ratio(kl: Tensor, kk: Tensor, ll: Tensor) -> Tensor:
    if kk.item() <= 0 or ll.item() <= 0:
        raise ZeroVarianceError(
            f"HSIC_1(K, K) = {kk.item():.3g}, HSIC_1(L, L) = {ll.item():.3g}: debiased CKA is "
            "undefined (constant features or too few examples)"
        )
    return kl / (kk * ll).sqrt()


def _song_hsic(kl: Tensor, k: tuple[Tensor, ...], l: tuple[Tensor, ...]) -> Tensor:  # noqa: E741
    """Unbiased HSIC_1 of Song et al. (JMLR 2012) from sums, without an n x n matrix of its own.

    ``kl`` = <K, L>; ``k`` and ``l`` are (diagonal, row sums, column sums) of K~ and L~, the
    matrices with a zero diagonal. For symmetric K, L this is Song's
    [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)); the row/column form
    below, <K^u, L^u> expanded, equals ``u_inner(u_centered(K), u_centered(L))`` also when float32
    rounding left a Gram slightly asymmetric. Exact in float64 for the Grams of centred features;
    on uncentred ones the terms grow with the squared offset and cancel: centre first.
    """
    (k_diag, k_rows, k_cols), (l_diag, l_rows, l_cols) = k, l
    n = k_diag.shape[0]
    off_diagonal = kl - k_diag @ l_diag
    totals = k_rows.sum() * l_rows.sum() / ((n - 1) * (n - 2))
    same = (3 - n) * (k_rows @ l_rows + k_cols @ l_cols)
    crossed = k_rows @ l_cols + k_cols @ l_rows
    return (off_diagonal + totals + (same - crossed) / (n - 2) ** 2) / (n * (n - 3))


def hsic1_from_grams(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741
    """[HSIC_1(K, L), HSIC_1(K, K), HSIC_1(L, L)] in float64 from two n x n Gram matrices, n >= 4.

    Song et al.'s formula on K~ (K with a zero diagonal), one pass over the matrices per product and
    no U-centred matrix; equal to ``u_inner(u_centered(k), u_centered(l))`` and its two companions.
    Pass Grams of column-centred features (:func:`linear_gram`): uncentred float32 Grams lose the
    result to cancellation.
    """
    k, l = k.double(), l.double()  # noqa: E741
    ks, ls = _zero_diagonal_sums(k), _zero_diagonal_sums(l)
    return torch.stack(
        [
            _song_hsic(matrix_dot(k, l), ks, ls),
            _song_hsic(matrix_dot(k, k), ks, ks),
            _song_hsic(matrix_dot(l, l), ls, ls),
        ]
    )


def _zero_diagonal_sums(k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    diag = k.diagonal()
    return diag, k.sum(1) - diag, k.sum(0) - diag


def hsic1_from_features(x: Tensor, y: Tensor) -> Tensor:
    """[HSIC_1(K, L), HSIC_1(K, K), HSIC_1(L, L)] in float64 for K = X X^T, L = Y Y^T, n >= 4.

    Without any n x n matrix: <K, L> = ||Y^T X||_F^2, diag(K)_i = ||x_i||^2 and K~1 = X (X^T 1) -
    diag(K), so the cost is the three d x d products, O(n (d_x d_y + d_x^2 + d_y^2)) instead of the
    Grams' O(n^2 (d_x + d_y)): cheaper when d < 2n/3 or so. ``x`` and ``y`` must be column-centred
    (without centring the diagonal terms dwarf the rest and the subtraction loses the result).
    The products keep the inputs' dtype; norms and sums are accumulated in float64.
    """
    xs, ys = _feature_sums(x), _feature_sums(y)
    kl, kk, ll = _sq_frobenius(y.T @ x), _sq_frobenius_self(x), _sq_frobenius_self(y)
    return torch.stack([_song_hsic(kl, xs, ys), _song_hsic(kk, xs, xs), _song_hsic(ll, ys, ys)])


def _feature_sums(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Diagonal, row and column sums of X X^T with a zero diagonal (rows = columns: symmetric)."""
    diag = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).square()
    # X^T 1 is rounding noise once the columns are centred: X (X^T 1) in x's dtype is plenty.
    rows = torch.mv(x, x.sum(0)).double() - diag
    return diag, rows, rows


def _sq_frobenius(m: Tensor) -> Tensor:
    return torch.linalg.vector_norm(m, dtype=torch.float64).square()


def _sq_frobenius_self(x: Tensor) -> Tensor:
    """||X^T X||_F^2 from the blocks on and above the diagonal: 3/4 of the multiply-adds."""
    if x.shape[1] < 128:  # below this the saving is lost to the extra calls
        return _sq_frobenius(x.T @ x)
    a, b = x.chunk(2, dim=1)
    return _sq_frobenius(a.T @ a) + 2 * _sq_frobenius(a.T @ b) + _sq_frobenius(b.T @ b)


def _feature_space_cost(n: int, dx: int, dy: int) -> float:
    """Multiply-adds of the three d x d products over those of the two n x n Grams."""
    return (dx * dy + dx * dx + dy * dy) / (n * (dx + dy))


def _cka_inputs(x: ArrayLike, y: ArrayLike, debiased: bool) -> tuple[Tensor, Tensor]:
    x, y = as_features(x, "x"), as_features(y, "y")
    check_pair(x, y, 4 if debiased else 2)
    check_varies(x, "x")
    check_varies(y, "y")
    return x, y


def linear_cka(x: ArrayLike, y: ArrayLike, debiased: bool = False) -> Tensor:
    """Linear CKA (Kornblith et al. 2019), biased or debiased (unbiased HSIC of Song et al. 2012).

    With fewer features than examples both estimators use d x d products of the centred features
    (biased: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F); debiased:
    :func:`hsic1_from_features`); otherwise the n x n Gram form. The biased estimator is inflated
    when d >> n: prefer ``debiased=True`` there (n >= 4).
    """
    x, y = _cka_inputs(x, y, debiased)
    n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
    if debiased and _feature_space_cost(n, dx, dy) < 1:
        return _debiased_ratio(*hsic1_from_features(_centred(x), _centred(y)))
    if not debiased and max(dx, dy) < n:
        xc, yc = _centred(x), _centred(y)
        cross = (yc.T @ xc).pow(2).sum()
        return cross / ((xc.T @ xc).pow(2).sum() * (yc.T @ yc).pow(2).sum()).sqrt()
    return cka_from_grams(linear_gram(x), linear_gram(y), debiased)


def rbf_cka(x: ArrayLike, y: ArrayLike, threshold: float = 1.0, debiased: bool = False) -> Tensor:
    """CKA with RBF kernels of bandwidth ``threshold`` x the median distance (:func:`rbf_gram`)."""
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    x, y = _cka_inputs(x, y, debiased)
    return cka_from_grams(rbf_gram(x, threshold), rbf_gram(y, threshold), debiased)


class MinibatchCKA:
    """Minibatch linear CKA of Nguyen, Raghu & Kornblith (ICLR 2021), memory O(b^2) whatever n.

    CKA = sum_i HSIC_1(K_i, L_i) / sqrt(sum_i HSIC_1(K_i, K_i) sum_i HSIC_1(L_i, L_i)) over batches
    i, with the unbiased HSIC_1; not the mean of per-batch CKA. Batches of fewer than 4 examples
    cannot enter HSIC_1: they are skipped and counted in ``skipped_examples``. ``name`` labels
    errors.
    """

    estimator = "minibatch debiased linear CKA (Nguyen et al. 2021)"

    def __init__(self, name: str = "features"):
        self.name = name
        self.n = 0
        self.batches = 0
        self.skipped_examples = 0
        self._sums = torch.zeros(3, dtype=torch.float64)

    @torch.no_grad()
    def update(self, x: ArrayLike, y: ArrayLike) -> None:
        """Add a batch of features; float32 features get float32 products unless float64 is cheap.

        Columns are centred first (U-centring ignores per-column offsets, so this is exact, and it
        keeps float32 products accurate). HSIC_1 then comes from the d x d products
        (:func:`hsic1_from_features`) when those are cheaper than the Grams, else from the Grams
        (:func:`hsic1_from_grams`). The products are float32 for float32 features, except when
        float64 ones (~3x dearer on CPU) still cost no more than the float32 Grams. Against
        float64, float32 Grams move CKA by ~5e-9 and float32 d x d products by ~1e-7 (their
        sums run over n rather than d; tested); everything after the products is float64.
        """
        x = as_features(x, f"{self.name} (x)", float64=False)
        y = as_features(y, f"{self.name} (y)", float64=False)
        n = check_pair(x, y, 1)
        if n < 4:
            self.skipped_examples += n
            return
        cost = _feature_space_cost(n, x.shape[1], y.shape[1])
        if cost < 1 / 3:
            x, y = x.double(), y.double()
        if cost < 1:
            self._add(hsic1_from_features(_centred(x), _centred(y)), n)
        else:
            self._add(hsic1_from_grams(linear_gram(x), linear_gram(y)), n)

    @torch.no_grad()
    def update_grams(self, k: Tensor, l: Tensor) -> None:  # noqa: E741
        """Add a batch given its Gram matrices (:func:`linear_gram`; callers may share one).

        Cheaper than :meth:`update_centred`: no U-centred matrix is formed.
        """
        self._add(hsic1_from_grams(k, l), k.shape[0])

    @torch.no_grad()
    def update_centred(self, ku: Tensor, lu: Tensor) -> None:
        """Add a batch given its U-centred Gram matrices (callers may share one across pairs)."""
        self._add(torch.stack([u_inner(ku, lu), u_inner(ku, ku), u_inner(lu, lu)]), ku.shape[0])

    def _add(self, hsic: Tensor, n: int) -> None:
        self._sums += hsic.cpu()
        self.n += n
        self.batches += 1

    def compute(self) -> float:
        if self.batches == 0:
            raise ValueError(f"{self.name}: no batch of >= 4 examples was seen; CKA is undefined")
        kl, kk, ll = self._sums.tolist()
        if kk <= 0 or ll <= 0:
            which = "x" if kk <= 0 else "y"
            raise ZeroVarianceError(
                f"{self.name}: features {which} have zero variance within every batch; "
                "CKA is undefined"
            )
        return kl / (kk * ll) ** 0.5


class StreamingLinearCKA:
    """Biased linear CKA in feature space, streamed over batches in O((d_x + d_y)^2) memory.

    Keeps the centred co-moment matrices Xc^T Xc, Yc^T Yc, Yc^T Xc, merged batch by batch (Chan et
    al.'s pairwise update, float64); CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), equal to
    ``linear_cka(X, Y)`` on the concatenated data. For d << n: the biased estimator is inflated
    otherwise.
    """

    estimator = "streaming biased linear CKA (feature space)"

    def __init__(self, name: str = "features"):
        self.name = name
        self.n = 0
        self._mean_x: Tensor | None = None
        self._mean_y: Tensor | None = None
        self._xx = self._yy = self._yx = torch.zeros(())

    @torch.no_grad()
    def update(self, x: ArrayLike, y: ArrayLike) -> None:
        x, y = as_features(x, f"{self.name} (x)"), as_features(y, f"{self.name} (y)")
        b = check_pair(x, y, 1)
        mx, my = x.mean(0), y.mean(0)
        xc, yc = x - mx, y - my
        xx, yy, yx = xc.T @ xc, yc.T @ yc, yc.T @ xc
        if self._mean_x is None:
            self._mean_x, self._mean_y, self._xx, self._yy, self._yx = mx, my, xx, yy, yx
            self.n = b
            return
        total = self.n + b
        dx, dy = mx - self._mean_x, my - self._mean_y
        w = self.n * b / total
        self._xx = self._xx + xx + w * torch.outer(dx, dx)
        self._yy = self._yy + yy + w * torch.outer(dy, dy)
        self._yx = self._yx + yx + w * torch.outer(dy, dx)
        self._mean_x = self._mean_x + dx * (b / total)
        self._mean_y = self._mean_y + dy * (b / total)
        self.n = total

    def compute(self) -> float:
        if self.n < 2:
            raise ValueError(f"{self.name}: CKA needs n >= 2 examples, got n = {self.n}")
        xx, yy = self._xx.pow(2).sum().item(), self._yy.pow(2).sum().item()
        if xx == 0 or yy == 0:
            which = "x" if xx == 0 else "y"
            raise ZeroVarianceError(f"{self.name}: features {which} are constant; CKA is undefined")
        return self._yx.pow(2).sum().item() / (xx * yy) ** 0.5
