"""End-to-end tests of `robustnb-experiment`: real papermill runs of the training notebook through submitit's local
executor (both runs, rerun skips, a killed run resumed to the same metrics, a failing run reported while the other
finishes, the report's numbers), the Slurm path under submitit's own mock, a bad spec refused before anything starts,
and an experiment run from an installed wheel without the source tree."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustnb.experiments import load_experiment, main, make_executor, report, results, run_experiment, run_state

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY = {"dataset": "digits", "arch": "smallcnn", "batch_size": 64, "eps": 0.1, "val_attack": "pgd2", "eval_subset": 64,
        "test_subset": 64, "eval_suite": "clean", "device": "cpu", "epochs": 2}


def _spec(path: Path, runs: dict, common: dict = TINY) -> Path:
    "Write a one-scale spec (flow-style YAML is JSON) and return its path."
    path.write_text("title: a test experiment\nscales:\n  cpu:\n    time: seconds\n"
                    f"    common: {json.dumps(common)}\n    runs:\n"
                    + "".join(f"      {k}: {json.dumps(v)}\n" for k, v in runs.items()))
    return path


def _metrics(exp, name):
    return json.loads((exp.out_dir(next(r for r in exp.runs if r.name == name)) / "metrics.json").read_text())


def _history(exp, name):
    out = exp.out_dir(next(r for r in exp.runs if r.name == name))
    return [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    "The shipped two-run toy experiment, run once through the real local executor, two jobs at a time."
    exp = load_experiment("toy", "cpu", root=tmp_path_factory.mktemp("runs"))
    lines = []
    t0 = time.time()
    outcomes = run_experiment(exp, "local", jobs=2, poll_s=0.5, echo=lines.append)
    return exp, outcomes, lines, time.time() - t0


def test_local_executor_runs_both_and_leaves_notebooks(toy):
    exp, outcomes, lines, _ = toy
    assert [(o.run, o.state) for o in outcomes] == [("standard", "done"), ("trades", "done")], [o.error for o in outcomes]
    for r in exp.runs:
        assert run_state(exp, r) == "done"
        nb = json.loads(exp.notebook(r).read_text())  # the executed notebook papermill left
        assert nb["metadata"]["papermill"]["parameters"]["out_dir"] == str(exp.out_dir(r))
        assert nb["metadata"]["papermill"]["parameters"]["method"] == r.params["method"]
        m = _metrics(exp, r.name)
        assert m["headline_source"] == "eval.json" and m["method"] == r.params["method"]
        assert any(l.startswith(f"{r.name}: clean {100 * m['clean_acc']:.2f} %") for l in lines), lines
    assert len(list((exp.folder / ".submitit").glob("*_submitted.pkl"))) == 2  # two submitit jobs, one per run


def test_rerun_skips_finished_runs(toy):
    exp, _, _, first_s = toy
    before = {r.name: exp.out_dir(r).joinpath("metrics.json").stat().st_mtime_ns for r in exp.runs}
    t0 = time.time()
    again = run_experiment(exp, "local", jobs=2, poll_s=0.5, progress=False)
    assert [o.state for o in again] == ["skipped", "skipped"]
    assert time.time() - t0 < first_s / 4
    assert {r.name: exp.out_dir(r).joinpath("metrics.json").stat().st_mtime_ns for r in exp.runs} == before
    assert len(list((exp.folder / ".submitit").glob("*_submitted.pkl"))) == 2  # no new job


def test_report_holds_the_runs_numbers(toy):
    exp, _, _, _ = toy
    out = report(exp)
    assert out == exp.folder / "report-cpu.ipynb"
    text = "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/markdown", ""))
                   for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", []))
    for r in exp.runs:
        m, ev = _metrics(exp, r.name), json.loads((exp.out_dir(r) / "eval.json").read_text())
        row = next(l for l in text.splitlines() if l.startswith(f"| [{r.name}]({r.name}.ipynb)"))
        assert f"{100 * ev['clean_acc']:.2f}" in row
        assert f"**{100 * m['headline']['robust_acc']:.2f}**" in row
        for attack, acc in ev["robust_acc"].items(): assert f"{100 * acc:.2f}" in row, (attack, row)
        assert f"{m['train_time_s'] / 60:.2f}" in row
    trades_row = next(l for l in text.splitlines() if l.startswith("| [trades]"))
    ours = 100 * _metrics(exp, "trades")["headline"]["robust_acc"]
    assert f"({ours - 30.0:+.1f})" in trades_row  # the spec's reported headline (30.0) and the difference
    assert "image/png" in json.dumps(json.loads(out.read_text())["cells"])  # the robustness-vs-time figure


def test_shared_run_is_trained_once_and_reported_by_both(toy, tmp_path):
    "A spec whose run is `{shared: toy/trades}` finds the toy experiment's run done: no job, the same row, a link to it."
    exp, _, _, _ = toy
    spec = tmp_path / "uses_toy.yaml"
    spec.write_text("title: shares the toy TRADES run\nscales:\n  cpu:\n    time: seconds\n    runs:\n"
                    "      baseline: {shared: toy/trades}\n")
    other = load_experiment(spec, "cpu", root=exp.root)
    run, = other.runs
    assert other.out_dir(run) == exp.out_dir(exp.runs[1]) and run_state(other, run) == "done"
    assert [o.state for o in run_experiment(other, jobs=1, poll_s=0.5, progress=False)] == ["skipped"]
    assert not list((other.folder / ".submitit").glob("*_submitted.pkl"))  # nothing was submitted
    row, = results(other)
    toy_row = next(r for r in results(exp) if r["run"] == "trades")
    assert {k: v for k, v in row.items() if k not in ("run", "base")} == {k: v for k, v in toy_row.items() if k not in ("run", "base")}
    from robustnb.experiments import results_table
    assert results_table(other).splitlines()[2].startswith("| [baseline](../toy/trades.ipynb) |")


def _proc_tree(pid):
    "pid and all its descendants, from /proc."
    children = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit(): continue
        try: ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError): continue
        children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo += children.get(q, [])
    return out


def test_killed_run_is_resumed_to_the_same_metrics(tmp_path):
    spec = _spec(tmp_path / "killme.yaml", {"a": {"method": "trades", "steps": 2, "epochs": 4}})
    ref = load_experiment(spec, "cpu", root=tmp_path / "ref")
    assert [o.state for o in run_experiment(ref, jobs=1, poll_s=0.5, progress=False)] == ["done"]

    exp = load_experiment(spec, "cpu", root=tmp_path / "killed")
    out = exp.out_dir(exp.runs[0])
    runner = subprocess.Popen([shutil.which("robustnb-experiment"), "run", str(spec), "--root", str(exp.root),
                               "--no-report"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not ((out / "history.jsonl").exists() and len((out / "history.jsonl").read_text().splitlines()) >= 2):
            assert runner.poll() is None and time.time() < deadline, "the run finished or stalled before it could be killed"
            time.sleep(0.2)
    finally:
        for pid in reversed(_proc_tree(runner.pid)):  # the runner, the submitit job and the kernel: a crash
            try: os.kill(pid, signal.SIGKILL)
            except ProcessLookupError: pass
        runner.wait()
    time.sleep(0.5)
    assert not (out / "metrics.json").exists()
    assert run_state(exp, exp.runs[0]) == "partial"
    outcomes = run_experiment(exp, jobs=1, poll_s=0.5, progress=False)
    assert [o.state for o in outcomes] == ["done"], outcomes[0].error
    a, b = _metrics(ref, "a"), _metrics(exp, "a")
    assert [r["at_epoch"] for r in b["resumes"]] in ([2], [3]) and a["resumes"] == []  # killed after epoch 2 (or 3)
    for k in ("clean_acc", "robust_acc", "best_epoch", "headline"): assert a[k] == b[k], k
    strip = lambda h: [{k: v for k, v in e.items() if "time" not in k and not k.endswith("_s")} for e in h]
    assert strip(_history(ref, "a")) == strip(_history(exp, "a"))


def test_failing_run_is_reported_and_the_other_finishes(tmp_path):
    spec = _spec(tmp_path / "onefails.yaml", {"good": {"method": "standard", "epochs": 1},
                                              "bad": {"method": "standard", "epochs": 1, "dataset": "mnist",
                                                      "root": str(tmp_path / "no-data")}})
    exp = load_experiment(spec, "cpu", root=tmp_path / "runs")
    lines = []
    outcomes = {o.run: o for o in run_experiment(exp, jobs=2, poll_s=0.5, echo=lines.append)}
    assert outcomes["good"].state == "done" and run_state(exp, exp.runs[0]) == "done"
    bad = outcomes["bad"]
    assert bad.state == "failed" and Path(bad.log).exists()
    assert "no-data" in bad.error and "MNIST" in bad.error, bad.error  # the end of the job's log says why
    assert any(l.startswith("bad: FAILED") and bad.log in l for l in lines)
    assert run_state(exp, exp.runs[1]) == "new"
    # the command line: exit 1, the failure named, the good run skipped
    r = subprocess.run([shutil.which("robustnb-experiment"), "run", str(spec), "--root", str(exp.root),
                        "--no-report"], capture_output=True, text=True)
    assert r.returncode == 1 and "1 of 2 runs done, failed: bad" in r.stdout, r.stdout + r.stderr


def test_bad_spec_is_refused_before_anything_starts(tmp_path, capsys):
    root = tmp_path / "runs"
    for runs, msg in [({"a": {"method": "standard"}, "b": {"recipe": "no_such_recipe"}}, "line 8: run 'b': unknown recipe"),
                      ({"a": {"method": "standard"}, "b": {"method": "pgd"}}, "line 8: run 'b': unknown method 'pgd'"),
                      ({"a": {"method": "standard"}, "b": {"method": "trades", "betta": 2}}, "line 8: run 'b': unknown parameter(s) betta")]:
        spec = _spec(tmp_path / "bad.yaml", runs)
        assert main(["run", str(spec), "--root", str(root)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"robustnb-experiment: error: {spec}, ") and msg in err, err
        assert not root.exists()


def test_slurm_executor_under_submitits_mock(tmp_path):
    "The Slurm path: one sbatch per run with the GPUs and partition asked, then the job run as a Slurm node would."
    from submitit.core import submission
    from submitit.slurm import slurm
    from submitit.slurm.test_slurm import mocked_slurm
    spec = _spec(tmp_path / "slurm.yaml", {"a": {"method": "standard", "epochs": 1}})
    exp = load_experiment(spec, "cpu", root=tmp_path / "runs")
    with mocked_slurm() as mock:
        ex = make_executor("slurm", exp.folder / ".submitit", gpus_per_run=2, timeout_min=90, slurm={"partition": "gpu"})
        import threading
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("out", run_experiment(exp, "slurm", executor=ex, poll_s=0.2,
                                                                                 progress=False)))
        t.start()
        deadline = time.time() + 60
        while not mock.job_sacct and time.time() < deadline: time.sleep(0.1)
        job_id = mock.last_job
        assert job_id, "no sbatch call"
        sbatch = (exp.folder / ".submitit" / f"{job_id}_submission.sh").read_text()
        for line in ("#SBATCH --gpus-per-node=2", "#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --ntasks-per-node=1"):
            assert line in sbatch, sbatch
        with mock.job_context(job_id):  # what the node does: unpickle and run execute_run
            submission.process_job(exp.folder / ".submitit")
        mock.set_job_state(job_id, "COMPLETED")
        t.join(300)
        slurm.SlurmJob.watcher.clear()
    assert [o.state for o in box["out"]] == ["done"], box["out"][0].error
    assert run_state(exp, exp.runs[0]) == "done" and exp.notebook(exp.runs[0]).exists()


def test_experiment_from_an_installed_wheel(tmp_path):
    "pip install of the built wheel, outside the source tree, is enough to list, run and report the toy experiment."
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True, text=True)
    wheel, = dist.glob("robustnb-*.whl")
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    for asset in ("robustnb/assets/train.ipynb", "robustnb/assets/report.ipynb", "robustnb/assets/experiments/toy.yaml"):
        assert asset in names, f"{asset} missing from the wheel"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    where = subprocess.run([str(py), "-c", "import robustnb.experiments as e; print(e.__file__); print(e.asset('train.ipynb'))"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where  # the wheel's module and its own copy of the notebook
    nb = subprocess.run([str(venv / "bin" / "robustnb-train"), "--notebook", str(work / "mine.ipynb")], cwd=work, env=env,
                        capture_output=True, text=True)
    assert nb.returncode == 0 and json.loads((work / "mine.ipynb").read_text())["cells"], nb.stderr
    run = subprocess.run([str(venv / "bin" / "robustnb-experiment"), "run", "toy", "--jobs", "2", "--root", "runs"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "toy (cpu): 2 of 2 runs done" in run.stdout
    assert (work / "runs" / "toy" / "report-cpu.ipynb").exists() and (work / "runs" / "toy" / "trades.ipynb").exists()
    m = json.loads((work / "runs" / "toy" / "trades" / "metrics.json").read_text())
    assert m["headline_source"] == "eval.json"
