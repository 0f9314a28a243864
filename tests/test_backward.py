"""Tests of Backward Smoothing and the single-step baselines (robustnb.backward)."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustnb.core import ThreatModel, count_passes, set_seed
from robustnb.backward import (RECIPES, BackwardSmoothing, BackwardSmoothingAT, FastAT, FastATPlus,
                               FastTRADES, backward_smoothing_init, output_target)


def _bn_net(d=16, k=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, k))


def _kl_to(t, logits):
    return F.kl_div(F.log_softmax(logits, 1), t, reduction="none").sum(1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("norm,eps,alpha", [("Linf", 0.1, 0.01), ("L2", 0.5, 0.05)])
def test_xi_star_lowers_the_kl_to_the_random_target(seed, norm, eps, alpha):
    set_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.rand(64, 1, 4, 4)
    tm = ThreatModel(norm, eps)
    set_seed(100 + seed)
    with torch.no_grad(): t = output_target(net(x), 1.0)   # the draw the init makes with the same RNG state
    set_seed(100 + seed)
    x0, clean = backward_smoothing_init(net, x, tm, alpha, gamma=1.0)
    with torch.no_grad(): before, after = _kl_to(t, net(x)), _kl_to(t, net(x0))
    assert tm.contains(x0, x)
    assert (after < before).float().mean() >= 0.95
    assert after.mean() < before.mean()
    torch.testing.assert_close(clean, net(x).detach())


def test_gamma_zero_target_is_the_prediction_and_xi_is_zero():
    set_seed(0)
    net = _bn_net().eval()
    x = torch.rand(32, 1, 4, 4)
    x0, clean = backward_smoothing_init(net, x, ThreatModel("Linf", 0.1), 0.1, gamma=0.0)
    assert torch.equal(output_target(clean, 0.0), F.softmax(clean, 1))
    assert torch.equal(x0, x)
    x0, _ = backward_smoothing_init(net, x, ThreatModel("Linf", 0.1), 0.1, gamma=1.0)
    assert not torch.equal(x0, x)  # and with noise it does move


def _methods(tm):
    return [BackwardSmoothing(tm), BackwardSmoothing(tm, points=2), BackwardSmoothing(tm, steps=3),
            BackwardSmoothingAT(tm), BackwardSmoothingAT(tm, points=2, steps=2), FastAT(tm), FastAT(tm, steps=3),
            FastAT(tm, attack_mode="train"), FastTRADES(tm), FastTRADES(tm, steps=2), FastATPlus(tm, pgd_steps=4)]


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("Linf", 0.3), ("L2", 0.5)])
def test_every_method_stays_in_the_ball_and_spends_what_it_declares(norm, eps):
    set_seed(0)
    net = _bn_net()
    x, y = torch.rand(48, 1, 4, 4), torch.randint(0, 4, (48,))
    tm = ThreatModel(norm, eps)
    for m in _methods(tm):
        net.train()
        with count_passes(net) as c:
            out = m(net, x, y)
            out.loss.backward()
        k = len(out.x_adv) // len(x)
        assert len(out.x_adv) == k * len(x)
        assert tm.contains(out.x_adv, x.repeat(k, 1, 1, 1), tol=1e-6), m
        assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
        assert c.per_sample(len(x))[1] == m.grad_evals, (m, c)
        assert all(l.training for l in net.modules())
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        net.zero_grad()


def test_declared_costs():
    tm = ThreatModel("Linf", 0.1)
    assert BackwardSmoothing(tm).grad_evals == 4          # a third of TRADES-10's 12
    assert BackwardSmoothingAT(tm).grad_evals == 3
    assert FastAT(tm).grad_evals == 2 and FastAT(tm, steps=2).grad_evals == 3
    assert FastTRADES(tm).grad_evals == 3 and FastTRADES(tm, steps=2).grad_evals == 4


def test_fast_at_plus_switches_and_survives_a_state_round_trip():
    set_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    x = torch.rand(64, 1, 4, 4)
    with torch.no_grad(): y = lin(x).argmax(1)
    m = FastATPlus(ThreatModel("Linf", 1e-4), pgd_steps=5)
    assert m.on_epoch_start(lin, x, y, 0)["phase"] == "fast" and m.grad_evals == 2
    assert m.on_epoch_start(lin, x, y, 1)["phase"] == "fast"     # no drop, no switch
    with torch.no_grad(): lin[1].weight.neg_(); lin[1].bias.neg_()
    r = m.on_epoch_start(lin, x, y, 2)
    assert r["collapsed"] and m.phase == "pgd" and m.grad_evals == 6
    fresh = FastATPlus(ThreatModel("Linf", 1e-4), pgd_steps=5)
    fresh.load_state_dict(json.loads(json.dumps(m.state_dict())))   # survives JSON too
    assert fresh.phase == "pgd" and fresh.grad_evals == 6 and fresh.checks == m.checks
    for e in range(3, 6): assert m.on_epoch_start(lin, x, y, e)["phase"] == "pgd"   # pgd_epochs=None: for good
    assert not any(p.grad is not None for p in lin.parameters())   # the check never touches parameter grads


def test_recipes_are_valid_configs_and_methods_train_end_to_end(tmp_path):
    import robustnb.backward as B
    import robustnb.train as T
    names = sorted(c.name for c in vars(B).values() if T._registry_of(c) is T.METHODS and c.__module__ == B.__name__)
    assert names == ["bs", "bs_at", "fast_at", "fast_at_plus", "fast_trades"]
    assert set(names) <= set(T.METHODS.names()) and set(RECIPES) <= set(T.RECIPES)
    for name in RECIPES:
        cfg = T.make_config(recipe=name, out_dir=str(tmp_path / "unused"))
        m = T.build_method(cfg)
        assert m.grad_evals == {"bs": 4, "fast_at": 2, "fast_trades": 3}[cfg.method], name
    for name in names:
        steps = dict(plus_pgd_steps=3) if name == "fast_at_plus" else dict(steps=1)
        cfg = T.make_config(method=name, dataset="digits", epochs=1, **steps, eps=0.1, eval_subset=64, val_attack="pgd3",
                            test_subset=64, max_train_samples=256, out_dir=str(tmp_path / name))
        run = T.fit(cfg, progress=False)
        assert run.metrics["grad_evals_per_sample"] == T.build_method(cfg).grad_evals
        assert run.history[-1]["passes_per_sample"] == run.history[-1]["grad_evals_per_sample"]   # counted = declared
        assert 0 <= run.metrics["robust_acc"]["pgd3"] <= run.metrics["clean_acc"] <= 1
