"""Components of a user's own module, registered with `plugins=toy_components` (not a test file: no `test_` prefix).

`ToyAT` is a method with a knob of its own (`toy_scale`); `StubClosureSGD` is an optimizer that calls its closure
`k` times per step (fresh minibatches), averages the gradients and takes one SGD step: the smallest optimizer of the
Entropy-SGD kind, for testing that the trainer composes, counts, checkpoints and resumes such optimizers."""
from typing import Optional

import torch
import torch.nn.functional as F

from robustnb.core import Adversarial, Method, MethodOutput, OptimizerHooks, ThreatModel, check_float, check_int, eval_mode
from robustnb.attacks import pgd


class ToyAT(Method):
    "PGD-AT whose cross-entropy is multiplied by `scale` (so the knob visibly changes the loss)."
    name, knob_prefix = "toy", "toy"

    def __init__(self, threat: ThreatModel, # norm, ε, box
                 steps: int = 2, # inner-maximization steps
                 scale: float = 1.0, # factor on the training loss
                ):
        self.threat, self.steps = threat, check_int("steps", steps, lo=1)
        self.scale = check_float("scale", scale, lo=0, lo_open=True)
        self.grad_evals = self.steps + 1

    def inner(self, model, x, y):
        with eval_mode(model):
            return Adversarial(pgd(model, x, y, self.threat, steps=self.steps, validate=False))

    def outer(self, model, x, y, adv):
        logits = model(adv.x_adv)
        return MethodOutput(self.scale * F.cross_entropy(logits, y), logits=logits, x_adv=adv.x_adv,
                            stats=dict(toy_scale=torch.tensor(self.scale)))


class StubClosureSGD(OptimizerHooks, torch.optim.SGD):
    "Calls the closure `k` times per step, averages the k gradients, then one SGD step (momentum, weight decay)."
    name, knob_prefix = "stub_sgd", "stub"

    def __init__(self, params, lr: float = 0.05, # learning rate (set by the trainer's schedule)
                 momentum: float = 0.9, # momentum
                 weight_decay: float = 5e-4, # L2 weight decay
                 k: int = 3, # closure calls (fresh minibatches) per step
                ):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.k = check_int("k", k, lo=1)

    @property
    def closure_calls(self) -> int: return self.k

    @torch.no_grad()
    def step(self, closure):
        params = [p for g in self.param_groups for p in g["params"]]
        total, loss = [torch.zeros_like(p) for p in params], None
        for _ in range(self.k):
            with torch.enable_grad(): l = closure()
            loss = l if loss is None else loss
            for t, p in zip(total, params):
                if p.grad is not None: t.add_(p.grad)
        for t, p in zip(total, params): p.grad = t / self.k
        super().step()
        return loss
