"""Tests of robustnb.evaluate that take seconds each and so stay out of nbs/10_evaluate.ipynb: an evaluation with the
standard AutoAttack leaves the model (and the global RNG) as it found it; honest headlines on a model that PGD
overrates; verdicts independent of the batch for every kind of attack. The rest is tested in the notebook."""
import pytest
import torch
from torch import nn

from robustnb.core import ThreatModel
from robustnb.evaluate import evaluate
from robustnb.masking import CheckConfig, ScaleLogits

TM = ThreatModel("Linf", 0.1)
CHEAP = CheckConfig(sweep=(1.0,), restarts=2, square_queries=300)  # less attack effort, the same thresholds


# ---------------------------------------------------------------- the model untouched (standard AutoAttack: 5 s)

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
