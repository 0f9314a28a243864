"Tests of robustnb.attacks: closed-form optima, the threat-model contract, model hygiene, determinism, bad input."
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from robustnb.attacks import (ATTACKS, CWL2, FGSM, MIFGSM, PGD, DeepFool, RayS, adbd, get_attack, kl_loss,
                              linear_binary, most_confusing_class, pgd)
from robustnb.core import ExampleRNG, ThreatModel


def linear_fixture(n=24, d=16, seed=0):
    "A binary linear model through the cube's centre; correctly classified points at L2 distance 0.05–0.2."
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    b = 0.1 - w.sum().item() / 2
    xb = 0.45 + 0.1 * torch.rand(n, d, generator=g)
    xb = xb - ((xb @ w + b) / w.norm() ** 2)[:, None] * w
    side = (torch.randint(0, 2, (n,), generator=g) * 2 - 1).float()
    x = xb + (side * (0.05 + 0.15 * torch.rand(n, generator=g)))[:, None] * w / w.norm()
    net = linear_binary(w, b)
    with torch.no_grad(): y = net(x).argmax(1)
    return net, w, b, x, y


def mlp(seed, d, k, hidden=16):
    "A random ReLU network whose hidden units cut through the cube (so predictions vary)."
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, k))
    with torch.no_grad():
        net[1].weight.mul_(4)
        net[1].bias.copy_(-net[1].weight.sum(1) / 2)
    return net


# ---------------------------------------------------------------- closed forms on a linear binary classifier
@pytest.mark.parametrize("norm,eps", [("Linf", 0.05), ("L2", 0.2)])
@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_pgd_reaches_linear_optimum(norm, eps, loss):
    net, w, b, x, _ = linear_fixture()
    y = torch.randint(0, 2, (x.shape[0],), generator=torch.Generator().manual_seed(3))  # any labels
    ys = (2 * y - 1).float()[:, None]
    best = x - eps * ys * (w.sign() if norm == "Linf" else w / w.norm())
    tm = ThreatModel(norm, eps)
    xa = PGD(net, tm, steps=20, alpha=None if norm == "Linf" else eps / 2, loss=loss)(x, y)
    lf = F.cross_entropy if loss == "ce" else (lambda z, t: (z.gather(1, (1 - t)[:, None]) - z.gather(1, t[:, None])).squeeze(1))
    opt = lf(net(best), y) if loss == "cw" else F.cross_entropy(net(best), y, reduction="none")
    got = lf(net(xa), y) if loss == "cw" else F.cross_entropy(net(xa), y, reduction="none")
    assert tm.contains(xa, x)
    assert (got - opt).abs().max() < 1e-4


def test_pgd_wrong_direction_is_not_optimal():
    "The closed-form check can fail: a single tiny step is far from the optimum."
    net, w, b, x, y = linear_fixture()
    best = x - 0.05 * (2 * y - 1).float()[:, None] * w.sign()
    xa = PGD(net, eps=0.05, steps=1, alpha=0.005, random_start="none")(x, y)
    assert (F.cross_entropy(net(best), y, reduction="none") - F.cross_entropy(net(xa), y, reduction="none")).max() > 1e-2


def test_deepfool_minimal_l2():
    net, w, b, x, y = linear_fixture()
    dmin = (x @ w + b).abs() / w.norm()
    xa = DeepFool(net)(x, y)
    dist = (xa - x).norm(dim=1)
    assert (net(xa).argmax(1) != y).all()
    assert (dist >= dmin * (1 - 1e-3)).all() and (dist <= dmin * 1.01).all()


def test_cw_minimal_l2():
    net, w, b, x, y = linear_fixture()
    dmin = (x @ w + b).abs() / w.norm()
    xa = CWL2(net, const=0.1, binary_steps=5, steps=300, lr=3e-3)(x, y)  # why these: see the notebook
    dist = (xa - x).norm(dim=1)
    assert (net(xa).argmax(1) != y).all()
    assert (dist >= dmin * (1 - 1e-3)).all() and (dist <= dmin * 1.01).all()


def test_rays_linf_distance():
    net, w, b, x, y = linear_fixture()
    dmin = (x @ w + b).abs() / w.abs().sum()  # Linf distance to the hyperplane
    res = RayS(net, query_budget=400).run(x, y)
    assert (net(res.x_adv).argmax(1) != y).all()
    assert (res.dist >= dmin - 1e-6).all() and (res.dist <= dmin * 1.05).all()
    assert (res.queries <= 400).all()
    assert abs(adbd(net, x, y, query_budget=400) - res.dist.mean().item()) < 1e-6


def test_rays_misclassified_is_zero_and_budget_is_respected():
    net, w, b, x, y = linear_fixture()
    res = RayS(net, query_budget=30).run(x, 1 - y)  # every point misclassified under the flipped labels
    assert (res.dist == 0).all() and (res.queries == 1).all()
    res = RayS(net, query_budget=30).run(x, y)
    assert (res.queries <= 30).all()


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


def test_minimal_norm_attacks_stay_in_box():
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(32, 10, generator=g).round() if seed % 2 else torch.rand(32, 10, generator=g)
        net = mlp(seed, 10, 4)
        with torch.no_grad(): y = net(x).argmax(1)
        for atk in (DeepFool(net), CWL2(net, binary_steps=2, steps=50), RayS(net, query_budget=50)):
            xa = atk(x, y)
            assert xa.min() >= 0 and xa.max() <= 1


# ---------------------------------------------------------------- the model is left exactly as it was
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    def forward(self, x): return self.head(self.body(x))


def all_attacks(net):
    tm, tm2 = ThreatModel("Linf", 0.1), ThreatModel("L2", 0.5)
    return [FGSM(net, tm), PGD(net, tm, steps=3), PGD(net, tm2, steps=3, loss="kl", random_start="gaussian"),
            PGD(net, tm, steps=3, targeted="most_confusing", restarts=2, early_stop=True), MIFGSM(net, tm, steps=3),
            DeepFool(net, steps=3), CWL2(net, binary_steps=2, steps=5), RayS(net, tm, query_budget=40)]


@pytest.mark.parametrize("i", range(8))
def test_attack_leaves_model_untouched(i):
    torch.manual_seed(0)
    net = Net()
    x, y = torch.rand(16, 12), torch.randint(0, 3, (16,))
    F.cross_entropy(net(x), y).backward()  # a real .grad on every parameter; updates BN stats in train mode
    net.train()
    net.head[1].eval()  # a frozen BN that must stay frozen
    modes = [m.training for m in net.modules()]
    state = {k: v.clone() for k, v in net.state_dict().items()}  # parameters and BN buffers
    grads = [p.grad.clone() for p in net.parameters()]
    atk = all_attacks(net)[i]
    atk(x, y)
    assert [m.training for m in net.modules()] == modes, atk
    for k, v in net.state_dict().items(): assert torch.equal(v, state[k]), (atk, k)
    for p, g in zip(net.parameters(), grads): assert torch.equal(p.grad, g), atk


def test_attack_leaves_none_grads_none():
    net = Net()
    x, y = torch.rand(8, 12), torch.randint(0, 3, (8,))
    for atk in all_attacks(net): atk(x, y)
    assert all(p.grad is None for p in net.parameters())


def test_attack_runs_in_eval_mode():
    "Dropout off during the attack: the result is deterministic although the model is in train mode."
    net = Net().train()
    x, y = torch.rand(8, 12), torch.randint(0, 3, (8,))
    atk = PGD(net, eps=0.1, steps=3)
    assert torch.equal(atk(x, y), atk(x, y))
    assert net.training


# ---------------------------------------------------------------- determinism, global RNG, devices
def test_seeded_and_independent_of_global_rng():
    net = mlp(0, 12, 4)
    x, y = torch.rand(32, 12), torch.randint(0, 4, (32,))
    atk = PGD(net, eps=0.1, steps=3, restarts=2)
    torch.manual_seed(1); a = atk(x, y); r1 = torch.rand(1)
    torch.manual_seed(2); b = atk(x, y)
    torch.manual_seed(1); r0 = torch.rand(1)
    assert torch.equal(a, b)  # the global seed does not matter
    assert torch.equal(r1, r0)  # and the attack did not draw from the global stream
    assert not torch.equal(a, PGD(net, eps=0.1, steps=3, restarts=2, seed=1)(x, y))


def test_pgd_function_matches_class_and_trades_start():
    net = mlp(0, 12, 4).eval()
    x, y = torch.rand(32, 12), torch.randint(0, 4, (32,))
    tm = ThreatModel("Linf", 0.1)
    g = ExampleRNG(0, torch.arange(32))  # the class draws from per-example streams of its seed (0)
    a = pgd(net, x, y, tm, steps=4, loss="kl", random_start="gaussian", generator=g)
    b = PGD(net, tm, steps=4, loss="kl", random_start="gaussian")(x, y)
    assert torch.equal(a, b)
    ref = F.log_softmax(net(x), 1)
    assert (kl_loss(net(a), y, ref) > 0).all()
    # the clean logits passed in are used, not recomputed: a different (fake) reference changes the result
    c = pgd(net, x, y, tm, steps=4, loss="kl", random_start="gaussian", clean_logits=torch.zeros(32, 4),
            generator=ExampleRNG(0, torch.arange(32)))
    assert not torch.equal(a, c)


def test_most_confusing_target():
    z = torch.tensor([[5., 4., 1.], [0., 9., 8.], [3., 2., 7.]])
    assert most_confusing_class(z, torch.tensor([0, 1, 2])).tolist() == [1, 2, 0]
    assert most_confusing_class(z, torch.tensor([1, 2, 0])).tolist() == [0, 1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_contract():
    net = mlp(0, 12, 4).cuda()
    x, y = torch.rand(32, 12, device="cuda"), torch.randint(0, 4, (32,), device="cuda")
    tm = ThreatModel("Linf", 0.1)
    for atk in eps_attacks(net, "Linf", 0.1, 0) + [DeepFool(net), CWL2(net, binary_steps=2, steps=20)]:
        xa = atk(x, y)
        assert xa.device == x.device and xa.dtype == torch.float32
        assert torch.equal(xa, atk(x, y))


# ---------------------------------------------------------------- a trained model
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


# ---------------------------------------------------------------- bad input
def test_bad_input():
    net = mlp(0, 12, 4)
    x, y = torch.rand(8, 12), torch.randint(0, 4, (8,))
    tm = ThreatModel("Linf", 0.1)
    cases = [
        (lambda: PGD(net, eps=-0.1), "eps"),
        (lambda: PGD(net, norm="L1", eps=0.1), "allowed are"),
        (lambda: PGD(net, tm, steps=0), "steps"),
        (lambda: PGD(net, tm, steps=2.5), "steps"),
        (lambda: PGD(net, tm, restarts=0), "restarts"),
        (lambda: PGD(net, tm, alpha=-1.0), "alpha"),
        (lambda: PGD(net, tm, loss="hinge"), "allowed are ce, cw, kl"),
        (lambda: PGD(net, tm, random_start="sphere"), "allowed are"),
        (lambda: PGD(net, tm, targeted="least_likely"), "allowed are"),
        (lambda: PGD(net, tm, loss="kl", targeted=True), "kl"),
        (lambda: PGD(net), "threat model"),
        (lambda: PGD("not a model", tm), "nn.Module"),
        (lambda: PGD(net, tm)(x + 1.5, y), "must lie in"),
        (lambda: PGD(net, tm)(x - 0.5, y), "must lie in"),
        (lambda: PGD(net, tm)(x, y[:-1]), "same length"),
        (lambda: PGD(net, tm)(x, y.float()), "integer"),
        (lambda: PGD(net, tm, targeted=True)(x, y), "target"),
        (lambda: PGD(net, tm, targeted=True)(x, y, target=y[:3]), "target"),
        (lambda: FGSM(net, eps=float("nan")), "eps"),
        (lambda: MIFGSM(net, tm, decay=-1), "decay"),
        (lambda: DeepFool(net, tm), "L2"),
        (lambda: DeepFool(net, candidates=1), "candidates"),
        (lambda: CWL2(net, steps=0), "steps"),
        (lambda: CWL2(net, lr=0), "lr"),
        (lambda: CWL2(net, ThreatModel("Linf", 0.1)), "L2"),
        (lambda: RayS(net, ThreatModel("L2", 1.0)), "Linf"),
        (lambda: RayS(net, query_budget=0), "query_budget"),
        (lambda: RayS(net, query_budget=5).run(x, y).robust, "eps"),
        (lambda: get_attack("apgd", net, tm), "allowed are"),
        (lambda: pgd(net, x, y, tm, steps=0), "steps"),
        (lambda: pgd(net, x, y, tm, schedule="step"), "allowed are"),
    ]
    for fn, msg in cases:
        with pytest.raises(ValueError, match=msg): fn()


def test_registry():
    assert ATTACKS.names() == ["cw", "deepfool", "fgsm", "mifgsm", "pgd", "rays"]
    net = mlp(0, 12, 4)
    tm = ThreatModel("Linf", 0.1)
    for name in ATTACKS.names():
        atk = get_attack(name, net, tm if name not in ("deepfool", "cw") else None)
        assert atk.name == name
