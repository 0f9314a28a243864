"""Tests of robustnb.attacks that cannot live in the notebook: the threat-model contract over many random cases
(hypothesis), the contract on CUDA, and a SmallCNN trained for this test. Closed-form optima, model hygiene,
determinism and bad input are tested in nbs/03_attacks.ipynb."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from robustnb.attacks import CWL2, FGSM, MIFGSM, PGD, DeepFool, RayS
from robustnb.core import ThreatModel


def mlp(seed, d, k, hidden=16):
    "A random ReLU network whose hidden units cut through the cube (so predictions vary)."
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, k))
    with torch.no_grad():
        net[1].weight.mul_(4)
        net[1].bias.copy_(-net[1].weight.sum(1) / 2)
    return net


# ---------------------------------------------------------------- the threat-model contract, over many cases
def eps_attacks(net, norm, eps, seed):
    tm = ThreatModel(norm, eps)
    out = [FGSM(net, tm, seed=seed), MIFGSM(net, tm, steps=3, seed=seed),
           PGD(net, tm, steps=3, seed=seed), PGD(net, tm, steps=3, loss="cw", restarts=2, seed=seed),
           PGD(net, tm, steps=3, loss="kl", random_start="gaussian", seed=seed),
           PGD(net, tm, steps=3, targeted="most_confusing", early_stop=True, seed=seed),
           PGD(net, tm, steps=3, alpha=3 * eps, schedule="cosine", seed=seed)]
    if norm == "Linf": out.append(RayS(net, tm, query_budget=60))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), norm=st.sampled_from(["Linf", "L2"]),
       eps=st.floats(0.0, 1.5), d=st.integers(2, 20), k=st.integers(2, 6), edge=st.booleans())
def test_every_eps_attack_stays_in_ball_and_box(seed, norm, eps, d, k, edge):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(16, d, generator=g)
    if edge: x = x.round()  # inputs on the box's faces: the box constraint is active
    y = torch.randint(0, k, (16,), generator=g)
    net = mlp(seed, d, k)
    tm = ThreatModel(norm, eps)
    for atk in eps_attacks(net, norm, eps, seed):
        xa = atk(x, y)
        assert xa.dtype == torch.float32 and xa.shape == x.shape
        assert (tm.dist(xa, x) <= eps + 1e-6).all(), (atk, tm.dist(xa, x).max())
        assert xa.min() >= 0 and xa.max() <= 1, atk


# ---------------------------------------------------------------- devices
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_contract():
    net = mlp(0, 12, 4).cuda()
    x, y = torch.rand(32, 12, device="cuda"), torch.randint(0, 4, (32,), device="cuda")
    tm = ThreatModel("Linf", 0.1)
    for atk in eps_attacks(net, "Linf", 0.1, 0) + [DeepFool(net), CWL2(net, binary_steps=2, steps=20)]:
        xa = atk(x, y)
        assert xa.device == x.device and xa.dtype == torch.float32
        assert torch.equal(xa, atk(x, y))


# ---------------------------------------------------------------- a trained model (5 s: trains its own SmallCNN)
def test_trained_digits_ordering():
    data = pytest.importorskip("robustnb.data")
    models = pytest.importorskip("robustnb.models")
    ds = data.get_data("digits")
    torch.manual_seed(0)
    net = models.get_model("smallcnn", dataset="digits")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batches = data.Batches(ds.x_train, ds.y_train, 64, seed=0)
    net.train()
    for epoch in range(8):
        batches.set_epoch(epoch)
        for xb, yb in batches:
            opt.zero_grad(); F.cross_entropy(net(xb), yb).backward(); opt.step()
    net.eval()
    x, y = data.to_float(ds.x_test[:200]), ds.y_test[:200]
    acc = lambda xs: (net(xs).argmax(1) == y).float().mean().item()
    tm = ThreatModel("Linf", 0.1)
    clean, a_fgsm, a_pgd = acc(x), acc(FGSM(net, tm)(x, y)), acc(PGD(net, tm, steps=20)(x, y))
    assert clean > 0.9 and a_pgd <= a_fgsm <= clean and a_pgd < clean - 0.1
    res = RayS(net, tm, query_budget=300).run(x, y)
    assert res.robust_accuracy >= a_pgd - 0.05  # a hard-label attack is not stronger than white-box PGD here
    assert (res.dist[~res.robust] <= 0.1).all() and (res.dist[res.robust] > 0.1).all()
