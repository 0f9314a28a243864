"""The contract, checked over the registries: every registered method, optimizer and weight perturbation, so that a
component added later is covered the day it is registered.

A method's inner maximization keeps its points in the ε-ball and the box and leaves the model as it found it (mode of
every submodule, parameters, batch-norm buffers, `.grad`); its counted forward+backward passes equal its declared
`grad_evals`, and one evaluation of its outer loss costs its `outer_evals`; its state survives a round trip through a
checkpoint. Optimizers and perturbations: their state round trip, and a perturbation is undone exactly."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustnb.train as T
from robustnb.core import (Adversarial, ThreatModel, atomic_torch_save, backward_output, count_passes, knobs_of,
                           safe_load, set_seed)


def small_net():
    "Batch norm and dropout, so that a forgotten mode switch changes something."
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(32, 4))


def few_steps(cls):
    "Knobs that keep the test fast: two inner steps where the method has that knob."
    names = {k.arg for k in knobs_of(cls)}
    return {a: 2 for a in ("steps",) if a in names}


THREATS = [ThreatModel("Linf", 0.1), ThreatModel("L2", 0.5)]


@pytest.mark.parametrize("name", T.METHODS.names())
@pytest.mark.parametrize("threat", THREATS, ids=["Linf", "L2"])
def test_every_registered_method_keeps_the_contract(name, threat, tmp_path):
    cls = T.METHODS.get(name)
    set_seed(0)
    net, x, y = small_net(), torch.rand(24, 1, 4, 4), torch.randint(0, 4, (24,))
    method = cls(threat, **few_steps(cls))
    net.train(); net[2].eval()                                       # a mixed mode must come back as it was
    for p in net.parameters(): p.grad = torch.full_like(p, 0.5)
    modes = [m.training for m in net.modules()]
    state = copy.deepcopy(net.state_dict())
    grads = [p.grad.clone() for p in net.parameters()]
    adv = method.inner(net, x, y)
    assert isinstance(adv, Adversarial) and len(adv.x_adv) % len(x) == 0
    k = len(adv.x_adv) // len(x)
    if method.leaves_threat_set: assert adv.x_adv.min() >= 0 and adv.x_adv.max() <= 1, name   # by design: the box only
    else: assert threat.contains(adv.x_adv, x.repeat(k, 1, 1, 1), tol=1e-5), name
    assert [m.training for m in net.modules()] == modes, name
    for key, v in net.state_dict().items(): assert torch.equal(v, state[key]), (name, key)
    for p, g in zip(net.parameters(), grads): assert torch.equal(p.grad, g), name
    assert all(not torch.is_tensor(v) or not v.requires_grad for v in adv.aux.values()), name   # constants are detached
    # counted passes = declared cost, for the whole loss and for one outer evaluation
    net.zero_grad(set_to_none=True); net.train()
    with count_passes(net) as c: backward_output(method(net, x, y))
    assert c.per_sample(len(x))[1] == method.grad_evals, (name, c, method.grad_evals)
    with count_passes(net) as c: backward_output(method.outer(net, x, y, method.inner(net, x, y)))
    passes = c.per_sample(len(x))[1]
    inner_passes = method.grad_evals - method.outer_evals
    assert passes == method.outer_evals + inner_passes, (name, passes, method.outer_evals)
    # the state survives a checkpoint (tensors and plain values, read back safely)
    atomic_torch_save(method.state_dict(), tmp_path / "m.pt")
    fresh = cls(threat, **few_steps(cls))
    fresh.load_state_dict(safe_load(tmp_path / "m.pt"))
    assert fresh.state_dict() == method.state_dict(), name


@pytest.mark.parametrize("name", T.OPTIMIZERS.names())
def test_every_registered_optimizer_survives_a_state_round_trip(name, tmp_path):
    "Two steps straight equal one step, a checkpoint of weights and optimizer state (read back safely), and one more."
    cls = T.OPTIMIZERS.get(name)
    set_seed(1)
    data = [(torch.rand(16, 1, 4, 4), torch.randint(0, 4, (16,))) for _ in range(60)]
    def make():
        set_seed(2); net = small_net(); return net, cls(net.parameters(), lr=0.05)
    def step(net, opt, it, seed):
        def closure():
            xb, yb = next(it)
            opt.zero_grad(); loss = F.cross_entropy(net(xb), yb); loss.backward(); return loss.detach()
        set_seed(seed); opt.step(closure)   # the same random stream for both paths (dropout, Langevin noise)
    net1, opt1 = make(); it1 = iter(data)
    step(net1, opt1, it1, 10); step(net1, opt1, it1, 11)
    net2, opt2 = make(); it2 = iter(data)
    step(net2, opt2, it2, 10)
    atomic_torch_save(dict(model=net2.state_dict(), opt=opt2.state_dict()), tmp_path / "ck.pt")
    ck = safe_load(tmp_path / "ck.pt")
    net3, opt3 = make()
    net3.load_state_dict(ck["model"]); opt3.load_state_dict(ck["opt"])
    step(net3, opt3, it2, 11)
    for p, q in zip(net1.parameters(), net3.parameters()): assert torch.equal(p, q), name


@pytest.mark.parametrize("name", T.PERTURBATIONS.names())
def test_every_registered_perturbation_is_undone_exactly(name):
    cls = T.PERTURBATIONS.get(name)
    set_seed(3)
    net, x, y = small_net().train(), torch.rand(16, 1, 4, 4), torch.randint(0, 4, (16,))
    method = T.METHODS.get("pgd_at")(ThreatModel("Linf", 0.1), steps=2)
    pert = cls().bind(method)
    pert.on_epoch_start(10**6)                                       # past any warm-up
    adv = method.inner(net, x, y)
    before = copy.deepcopy(net.state_dict())
    with count_passes(net) as c: token = pert.perturb(net, lambda m: method.outer(m, x, y, adv).loss)
    assert c.per_sample(len(x))[1] == pert.grad_evals
    assert any(not torch.equal(v, before[k]) for k, v in net.state_dict().items())   # it moved something
    pert.restore(net, token)
    for k, v in net.state_dict().items(): assert torch.equal(v, before[k]), (name, k)
    fresh = cls(); fresh.load_state_dict(pert.state_dict())
    assert fresh.state_dict() == pert.state_dict()
