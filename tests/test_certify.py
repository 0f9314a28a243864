"""Tests of robustnb.certify: randomized smoothing against its closed form on a linear model; the Clopper-Pearson
bound is exact."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from robustnb.attacks import linear_binary
from robustnb.certify import Smooth, certified_accuracy, certify_dataset, clopper_pearson_lower
from robustnb.core import set_seed


def test_smoothing_matches_the_linear_closed_form():
    set_seed(1)
    d, sigma = 10, 0.5
    w, b = torch.randn(d), 0.3
    f = linear_binary(w, b)
    x = torch.rand(25, d)
    s = x @ w + b
    dist = s.abs() / w.norm()                                    # exact radius = distance to the hyperplane
    smooth = Smooth(f, 2, sigma, batch_size=5000)
    pa = torch.distributions.Normal(0, 1).cdf(s / (sigma * w.norm()))
    c = smooth.counts(x[3], 40000, torch.Generator().manual_seed(0))
    assert abs(c[1].item() / 40000 - pa[3].item()) < 4 * math.sqrt(pa[3] * (1 - pa[3]) / 40000)
    cert = certify_dataset(smooth, x, (s > 0).long(), n0=100, n=20000, alpha=0.001, seed=0, progress=False)
    ok = cert["pred"] != Smooth.ABSTAIN
    assert ok.sum() >= 18
    assert (cert["pred"][ok] == (s[ok] > 0).long()).all()
    assert (cert["radius"][ok] <= dist[ok] + 1e-6).all()
    assert (cert["radius"][ok] >= dist[ok] - 0.1).all()
    # abstain exactly where the exact radius is too small to be certified with n samples
    assert not ok[dist < 0.01].any()
    # far from the boundary every sample agrees: the bound is alpha^(1/n), the radius sigma * Phi^-1 of it
    far = Smooth(linear_binary(w, 100.0), 2, sigma)
    cls, r = far.certify(x[0], n0=50, n=1000, alpha=0.01)
    assert cls == 1 and r == pytest.approx(sigma * torch.distributions.Normal(0, 1).icdf(torch.tensor(0.01 ** (1 / 1000))).item(), rel=1e-4)
    assert far.predict(x[0], n=100) == 1
    curve = certified_accuracy(cert["radius"], cert["correct"], [0.0, 0.05, 0.1, 0.3, 1.0])
    assert (np.diff(curve) <= 0).all() and curve[-1] <= (dist >= 1.0).float().mean().item()


@pytest.mark.parametrize("k, n, alpha", [(1, 10, 0.05), (37, 50, 0.001), (999, 1000, 0.01)])
def test_clopper_pearson_is_exact(k, n, alpha):
    p = clopper_pearson_lower(k, n, alpha)
    assert binom.sf(k - 1, n, p) == pytest.approx(alpha, rel=1e-6)   # P(X >= k | p_lower) = alpha
    assert clopper_pearson_lower(0, n, alpha) == 0.0
    with pytest.raises(ValueError):
        clopper_pearson_lower(n + 1, n, alpha)
