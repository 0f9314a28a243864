"""Tests of robustnb.analysis: the input-gradient norm in closed form, the penultimate features, the power iteration
for the top input-Hessian eigenvalue against the exact eigenvalues, the seed-stability summary."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustnb.analysis import hessian_top_eigenvalue, input_grad_norms, penultimate_features, stability_summary
from robustnb.attacks import linear_binary
from robustnb.core import set_seed


def test_input_gradient_norms_closed_form():
    set_seed(2)
    w = torch.randn(6)
    f = linear_binary(w, -0.5 * w.sum().item())
    x, y = torch.rand(32, 6), torch.ones(32, dtype=torch.long)
    s = x @ w - 0.5 * w.sum()
    torch.testing.assert_close(input_grad_norms(f, x, y), torch.sigmoid(-s) ** 2 * w.norm() ** 2, rtol=1e-5, atol=1e-7)


def test_penultimate_features_are_the_last_hidden_layer():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.rand(9, 4)
    torch.testing.assert_close(penultimate_features(mlp, x, batch_size=4), torch.relu(mlp[1](x)))



def _exact_top(model, x, y, loss, x_ref):
    from robustnb.attacks import get_loss
    lossf = get_loss(loss)
    with torch.no_grad(): ref = F.log_softmax(model(x_ref), 1)
    tops = []
    for i in range(len(x)):
        H = torch.autograd.functional.hessian(lambda xi: lossf(model(xi[None]), y[i:i + 1], ref[i:i + 1]).sum(), x[i])
        ev = torch.linalg.eigvalsh(H.reshape(x[i].numel(), -1).double())
        tops.append(ev[ev.abs().argmax()].item())
    return float(np.mean(tops))


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh])
@pytest.mark.parametrize("loss", ["ce", "kl"])
def test_power_iteration_matches_the_exact_top_eigenvalue(act, loss):
    set_seed(3)
    model = nn.Sequential(nn.Linear(10, 24), act(), nn.Linear(24, 24), act(), nn.Linear(24, 4))
    model.train()
    x_ref, y = torch.rand(5, 10), torch.randint(0, 4, (5,))
    x = x_ref + 0.1 * torch.randn_like(x_ref) if loss == "kl" else x_ref
    est = hessian_top_eigenvalue(model, x, y, loss=loss, iters=500, tol=1e-8, x_ref=x_ref)
    exact = _exact_top(model, x, y, loss, x_ref)
    assert abs(est - exact) <= 0.01 * abs(exact), (est, exact)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())


def test_hessian_on_a_conv_model_is_finite_and_nonnegative_for_relu():
    from robustnb.models import get_model
    set_seed(0)
    model = get_model("smallcnn", dataset="digits")
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    lam = hessian_top_eigenvalue(model, x, y, iters=10)
    assert np.isfinite(lam) and lam >= 0
    assert lam == hessian_top_eigenvalue(model, x, y, iters=10)  # seeded: reproducible


def test_stability_summary():
    s = stability_summary({"a": [0.1, 0.2, 0.6]})
    assert s["a"]["median"] == 0.2 and s["a"]["min"] == 0.1 and s["a"]["max"] == 0.6
    assert abs(s["a"]["mean"] - 0.3) < 1e-12
