"""Tests of robustnb.masking: masked models are flagged and an ordinary one is not; the documented thresholds; the
white-box gap threshold scales with the sample size."""
import pytest
import torch
from torch import nn

from robustnb.core import ThreatModel
from robustnb.evaluate import AttackResult
from robustnb.masking import CheckConfig, QuantizeInput, ScaleLogits, SoftmaxOutput, _check_whitebox_gap, masking_checks

TM = ThreatModel("Linf", 0.1)
CHEAP = CheckConfig(sweep=(1.0,), restarts=2, square_queries=300)  # less attack effort, the same thresholds


def flagged(model, x, y, config=None, n=50):
    return {c.name for c in masking_checks(model, x, y, TM, n=n, config=config) if c.flagged}


# ---------------------------------------------------------------- gradient-masking checks

def test_ordinary_model_is_not_flagged(trained):
    net, x, y = trained
    checks = masking_checks(net, x, y, TM, n=40)
    assert [c.name for c in checks] == ["mode", "logits", "randomness", "gradients", "eps_sweep", "steps", "loss", "blackbox"]
    assert [c.message for c in checks if c.flagged] == []
    sweep = next(c for c in checks if c.name == "eps_sweep").details["accuracy"]
    assert sweep[-1] <= 0.05 and sweep[0] >= sweep[-1]


class NoisyInput(nn.Module):
    "A randomized model: Gaussian noise on the input at every forward pass."
    def __init__(self, model, sigma=0.3):
        super().__init__()
        self.model, self.sigma = model, sigma
    def forward(self, x): return self.model(x + self.sigma * torch.randn_like(x))


@pytest.mark.parametrize("wrap, expected", [
    (lambda m: QuantizeInput(m, 4), {"gradients", "eps_sweep"}),      # shattered gradients: zero almost everywhere
    (lambda m: ScaleLogits(m, 1e4), {"gradients", "loss"}),           # saturated softmax: CE gradient exactly 0
    (lambda m: SoftmaxOutput(m), {"logits"}),                          # probabilities instead of logits
    (lambda m: NoisyInput(m), {"randomness"}),                         # a randomized model
])
def test_masked_models_are_flagged(trained, wrap, expected):
    net, x, y = trained
    found = flagged(wrap(net).eval(), x, y, CHEAP)
    assert expected <= found, found
    assert "mode" not in found


def test_train_mode_is_flagged_and_restored(trained):
    net, x, y = trained
    net.train()
    try:
        assert flagged(net, x, y, CHEAP, n=30) == {"mode"}
        assert net.training and all(m.training for m in net.modules())
    finally:
        net.eval()


def test_check_thresholds_are_the_documented_ones():
    c = CheckConfig()
    assert (c.tol, c.zero_grad_frac, c.unbounded_acc, c.loss_gap, c.restarts, c.square_queries) == (0.02, 0.01, 0.05, 0.10, 5, 1000)


def _result(name, correct, kind="white"):
    return AttackResult(name, name.upper(), kind, torch.tensor(correct, dtype=torch.bool))


def test_whitebox_gap_threshold_scales_with_the_sample_size():
    "A 6-point gap: noise on 100 examples (3·√6/100 = 7.3 points), a flag on 1000 (threshold 5 points)."
    for m, flagged in ((100, False), (1000, True)):
        strong = [False] * (m // 10) + [True] * (m - m // 10)                      # 90 % robust under the strong attack
        weak = [False] * (4 * m // 100) + [True] * (6 * m // 100) + strong[m // 10:]  # 6 points more: b = 0.06 m, c = 0
        res = {"clean": _result("clean", [True] * m, "clean"), "pgd20": _result("pgd20", weak),
               "aa": _result("aa", strong, "ensemble")}
        c = _check_whitebox_gap(res, CheckConfig())
        d = c.details["attacks"]["pgd20"]
        assert abs(d["gap"] - 0.06) < 1e-9 and c.flagged == flagged, (m, d)
    assert _check_whitebox_gap({"clean": _result("clean", [True], "clean")}, CheckConfig()) is None
