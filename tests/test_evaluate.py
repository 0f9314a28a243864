"""Tests of robustnb.evaluate: the worst case; an evaluation leaves the model (and the global RNG) as it found it; bad
input is refused; AutoAttack agrees with itself and with PGD; RayS and L2; honest headlines; verdicts independent of
the batch."""
import pytest
import torch
from torch import nn

from robustnb.core import ThreatModel
from robustnb.data import to_float
from robustnb.evaluate import AttackResult, evaluate, resolve_suite, worst_case
from robustnb.masking import CheckConfig, ScaleLogits

TM = ThreatModel("Linf", 0.1)
CHEAP = CheckConfig(sweep=(1.0,), restarts=2, square_queries=300)  # less attack effort, the same thresholds


# ---------------------------------------------------------------- the suite: worst case, model untouched, errors

def test_worst_case_is_below_every_attack(trained):
    net, x, y = trained
    res = evaluate(net, x, y, TM, ["fgsm", "pgd20", "cw20", "mifgsm", "deepfool"], subsets={"deepfool": 60},
                   progress=False, checks=False)
    assert res.worst.n == 60
    for r in res.results.values():
        assert res.worst.accuracy <= r.accuracy_on(60)
    assert res.worst.accuracy < res["clean"].accuracy
    g = torch.Generator().manual_seed(0)
    rows = [AttackResult(str(i), str(i), "white", torch.rand(50, generator=g) < 0.7) for i in range(5)]
    w = worst_case(rows)
    assert all(w.accuracy <= r.accuracy for r in rows) and w.accuracy == torch.stack([r.correct for r in rows]).all(0).sum().item() / 50


def test_evaluation_leaves_model_and_rng_unchanged(trained):
    net, x, y = trained
    net.train()
    next(m for m in net.modules() if isinstance(m, nn.Dropout)).eval()      # a frozen submodule must stay frozen
    modes = [m.training for m in net.modules()]
    first = next(net.parameters())
    first.requires_grad_(False)
    for p in net.parameters(): p.grad = torch.full_like(p, 0.5) if p.requires_grad else None
    state = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    rng = torch.get_rng_state()
    try:
        evaluate(net, x, y, TM, ["pgd10", "aa"], aa_subset=8, options={"aa": {"n_queries": 100}}, checks=False,
                 progress=False)                                     # standard AA: FAB calls .backward()
        assert [m.training for m in net.modules()] == modes
        assert [p.requires_grad for p in net.parameters()] == flags
        assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
        assert all((p.grad is None) if not f else torch.equal(p.grad, torch.full_like(p, 0.5))
                   for p, f in zip(net.parameters(), flags))
        assert torch.equal(torch.get_rng_state(), rng)   # AutoAttack re-seeds the global generator: we fork it
    finally:
        first.requires_grad_(True)
        for p in net.parameters(): p.grad = None
        net.eval()


def test_evaluation_is_deterministic(trained):
    net, x, y = trained
    a = evaluate(net, x, y, TM, ["pgd20", "fgsm"], progress=False, checks=False, seed=3)
    b = evaluate(net, x, y, TM, ["pgd20", "fgsm"], progress=False, checks=False, seed=3)
    assert all(torch.equal(a[k].correct, b[k].correct) for k in a.results)


@pytest.mark.parametrize("call, match", [
    (lambda n, x, y: evaluate(n, x, y, ("Linf", -0.1)), "eps"),
    (lambda n, x, y: evaluate(n, x, y, ThreatModel("L2", float("nan"))), "eps"),
    (lambda n, x, y: evaluate(n, x, y, TM, ["pgd20", "bim"]), "unknown attack 'bim': allowed are aa, aa_fast, apgd-ce, apgd-dlr, clean"),
    (lambda n, x, y: evaluate(n, x, y, TM, "fastest"), "unknown suite 'fastest': allowed are clean, pgd, quick"),
    (lambda n, x, y: evaluate(n, x, y, ThreatModel("L2", 0.5), ["rays"]), "rays: not applicable to the L2 threat model"),
    (lambda n, x, y: evaluate(n, to_float(x) * 2, y, TM), r"must lie in \[0.0, 1.0\]"),
    (lambda n, x, y: evaluate(n, to_float(x) - 0.5, y, TM), "normalization belongs inside the model"),
    (lambda n, x, y: evaluate(n, x[:0], y[:0], TM), "empty"),
    (lambda n, x, y: evaluate(n, x, y[:-1], TM), "one label per example"),
    (lambda n, x, y: evaluate(n, x, y + 10, TM, "clean"), r"labels must be in \[0, 10\)"),
    (lambda n, x, y: evaluate(n, x, y, TM, "pgd", options={"pgd20": {"steps": 3}}), "takes the options"),
    (lambda n, x, y: evaluate(n, x, y, TM, "pgd", aa_subset=0), "aa_subset must be an integer >= 1"),
    (lambda n, x, y: evaluate(n, x, y, TM, "pgd", device="meta"), "device"),
])
def test_bad_input_gets_a_clear_error(trained, call, match):
    net, x, y = trained
    with pytest.raises(ValueError, match=match):
        call(net, x, y)


def test_suites_follow_the_norm():
    full_linf = [a.name for a in resolve_suite("full", TM)]
    full_l2 = [a.name for a in resolve_suite("full", ThreatModel("L2", 0.5))]
    assert "rays" in full_linf and "rays" not in full_l2 and full_l2 == [n for n in full_linf if n != "rays"]
    assert [a.name for a in resolve_suite("quick", TM)] == ["clean", "fgsm", "pgd20", "pgd100", "cw100", "apgd-ce", "aa_fast"]


# ---------------------------------------------------------------- AutoAttack, RayS, L2

def test_autoattack_fast_is_consistent(trained):
    net, x, y = trained
    res = evaluate(net, x, y, TM, ["pgd20", "aa_fast"], aa_subset=30, progress=False, checks=False)
    aa, clean = res["aa_fast"], res["clean"]
    assert aa.n == 30 and aa.accuracy <= res["pgd20"].accuracy_on(30) + 1 / 30
    assert not (aa.correct & ~clean.correct[:30]).any()            # robust under AA implies clean-correct
    assert aa.stats["after"]["apgd-t"] == pytest.approx(aa.accuracy, abs=1e-9)
    assert aa.stats["after"]["apgd-ce"] >= aa.stats["after"]["apgd-t"]


def test_rays_and_l2(trained):
    net, x, y = trained
    res = evaluate(net, x, y, TM, ["rays"], subsets={"rays": 20}, options={"rays": {"query_budget": 300}},
                   progress=False, checks=False)
    r = res["rays"]
    assert (r.dist[~r.correct & res["clean"].correct[:20]] <= TM.eps).all()
    assert 0 < r.stats["adbd"] < 1 and res.to_dict()["adbd"] == r.stats["adbd"]
    l2 = evaluate(net, x, y, ThreatModel("L2", 0.5), ["fgsm", "pgd20", "deepfool"], progress=False, checks=False)
    assert l2["pgd20"].accuracy <= l2["fgsm"].accuracy <= l2["clean"].accuracy


# ---------------------------------------------------------------- honest headlines (issue: PGD 16 % where AutoAttack found 0 %)

def test_headline_and_whitebox_gap_on_a_model_pgd_overrates(trained):
    "Logits ×1e4 saturate the softmax: CE-based PGD finds nothing, AutoAttack's DLR-based APGD-T breaks it."
    net, x, y = trained
    masked = ScaleLogits(net, 1e4).eval()
    res = evaluate(masked, x, y, TM, ["pgd20", "pgd100", "aa_fast"], aa_subset=60, check_n=60, check_config=CHEAP,
                   progress=False)
    pgd, aa = res["pgd100"].accuracy_on(60), res["aa_fast"].accuracy
    assert pgd > aa + 0.2, (pgd, aa)                                  # the weak-attack number is far above
    h = res.headline
    assert h["robust_acc"] == res.worst.accuracy <= aa and h["n"] == 60
    assert h["label"] == "AutoAttack fast (APGD-CE, APGD-T), worst case of 3 attacks"
    gap = next(c for c in res.checks if c.name == "whitebox_gap")
    assert gap.flagged and "PGD-" in gap.message and "Never report them" in gap.message
    d = gap.details["attacks"]["pgd20"]
    assert d["strongest"] == "aa_fast" and d["gap"] > d["threshold"]
    # the same suite without any official attack: the headline says so itself
    h2 = evaluate(masked, x, y, TM, "pgd", progress=False, checks=False).headline
    assert h2["label"].startswith("in-house attacks only, worst case of 4 attacks") and "may overstate" in h2["label"]
    # an ordinary model: the in-house attacks agree with AutoAttack, no flag
    res3 = evaluate(net, x, y, TM, ["pgd100", "aa_fast"], aa_subset=60, check_n=60, check_config=CHEAP, progress=False)
    assert not next(c for c in res3.checks if c.name == "whitebox_gap").flagged


@pytest.mark.parametrize("suite", [["fgsm", "pgd20", "cw20", "mifgsm", "apgd-ce", "deepfool", "rays"]])
def test_same_attack_same_examples_same_verdict_whatever_the_batch(trained, suite):
    net, x, y = trained
    opts = {"rays": {"query_budget": 200}, "apgd-ce": {"n_iter": 20}, "deepfool": {"steps": 10}}
    a = evaluate(net, x[:60], y[:60], TM, suite, batch_size=7, options=opts, checks=False, progress=False)
    b = evaluate(net, x[:60], y[:60], TM, suite, batch_size=60, options=opts, checks=False, progress=False)
    for k in a.results: assert torch.equal(a[k].correct, b[k].correct), k
    # and a slice of the set gets the verdicts of the same examples in the whole set
    c = evaluate(net, x[:60], y[:60], TM, ["pgd20", "apgd-ce"], options={"apgd-ce": {"n_iter": 20}}, checks=False,
                 progress=False)
    assert torch.equal(c["pgd20"].correct, a["pgd20"].correct) and torch.equal(c["apgd-ce"].correct, a["apgd-ce"].correct)
