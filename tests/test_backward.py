"""Tests of robustnb.backward that cannot live in its notebook: every method trained end to end through the trainer
(robustnb.train sits below robustnb.backward, so nbs/06_backward.ipynb cannot import it). The methods themselves are
tested in the notebook."""
from robustnb.backward import RECIPES


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
