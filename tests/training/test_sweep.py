"""Hyperparameter sweeps (issue 14 §2): an Optuna study in the workspace whose trials are ordinary jobs.

The median pruner is tested as logic, through the same ``sweep.report`` a trial's training calls, against a
real Optuna study (no training); a report that prunes stopping the training is the trainer's test. End to
end, a 2-trial sweep launched from the Training page with 2 trials at a time: results table and plots shown,
the best trial's config cloned into the form; then `cxr sweep show` reads the same sweep.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import cxr_here, job_workspace, kill_jobs
from cxrcore.errors import ConfigError
from cxrcore.jobs import JobStore
from cxrcore.jobs import sweep

ROOT = Path(__file__).resolve().parents[2]
PAGE = str(ROOT / "views" / "training.py")


# --------------------------------------------------------------------------- the median pruner, as logic

def _study_with(tmp_path, values_by_trial: list[list[float]], prune_after: int, metric: str = "loss"):
    """A sweep's study as `sweep.create` makes it (its spec in the user attributes), whose first trials have
    completed with these per-epoch values; (sweep dict of a new running trial, as a trial's config holds it)."""
    import optuna

    spec = sweep.SweepSpec("p", {}, sweep.parse_space("lr = 1e-3, 1e-2"), metric=metric, prune_after=prune_after)
    db = tmp_path / "sweeps.sqlite"
    study = optuna.create_study(study_name="sweep-test", storage=sweep._storage(db), direction=spec.direction,
                                pruner=sweep._pruner(spec))
    study.set_user_attr("spec", spec.to_dict())
    for values in values_by_trial:
        trial = study.ask()
        for epoch, v in enumerate(values, start=1):
            trial.report(v, epoch)
        study.tell(trial, values[-1])
    running = study.ask()
    return {"db": str(db), "id": "sweep-test", "trial_id": running._trial_id}


def test_the_median_pruner_prunes_a_loss_above_the_median_of_completed_trials(tmp_path):
    trial = _study_with(tmp_path, [[0.50, 0.40], [0.60, 0.45], [0.70, 0.50]], prune_after=2)
    assert sweep.report(trial, 1, 0.55) is None                 # below the median (0.60) at epoch 1: goes on
    reason = sweep.report(trial, 2, 0.90)                        # above the median (0.45) at epoch 2: pruned
    assert reason.startswith("pruned by the sweep after epoch 2: its validation loss 0.9000 is above the median "
                             "0.4500 of the completed trials at that epoch")


def test_the_median_pruner_waits_for_enough_completed_trials_and_prunes_nan(tmp_path):
    assert sweep.report(_study_with(tmp_path / "a", [[0.1]], prune_after=2), 1, 9.0) is None   # 1 of 2 completed
    assert sweep.report(_study_with(tmp_path / "b", [[0.1], [0.2]], prune_after=2), 1, float("nan"))   # diverged
    done = [[0.80], [0.70]]                                                  # AUROC: higher is better
    assert sweep.report(_study_with(tmp_path / "c", done, prune_after=2, metric="auroc"), 1, 0.9) is None
    reason = sweep.report(_study_with(tmp_path / "d", done, prune_after=2, metric="auroc"), 1, 0.5)
    assert "validation mean AUROC 0.5000 is below the median" in reason


def test_a_trial_of_no_sweep_reports_to_nobody():
    assert sweep.trial_reporter({"epochs": 1}) is None
    assert callable(sweep.trial_reporter({"sweep": {"db": "x", "id": "y", "trial_id": 1}}))


# --------------------------------------------------------------------------- the search space

def test_parse_space_ranges_values_and_refusals():
    space = sweep.parse_space("lr = 1e-4 .. 1e-2 log\nimage_size = 48, 64  # sizes\n\noptimizer = adamw, adam")
    assert space["lr"].kind == "float" and space["lr"].log and (space["lr"].low, space["lr"].high) == (1e-4, 1e-2)
    assert space["image_size"].values == [48, 64] and space["optimizer"].values == ["adamw", "adam"]
    assert sweep.grid_size({k: v for k, v in space.items() if v.values}) == 4
    d = space["lr"].distribution()
    assert d.log and d.low == 1e-4
    for bad, msg in (("lr 1e-3", "not `option = values`"), ("colour = red", "not an option a sweep can vary"),
                     ("lr = 1e-2 .. 1e-4", "low < high"), ("lr = 0 .. 1e-2 log", "low > 0"),
                     ("optimizer = sgd", "is one of adamw, adam"), ("image_size = big", "takes int values"),
                     ("optimizer = adam .. adamw", "is one of"), ("epochs = 0, 2", "outside its bounds"),
                     ("lr = 1e-3\nlr = 1e-2", "given twice"), ("", "at least one option")):
        with pytest.raises(ConfigError, match=msg):
            sweep.parse_space(bad)


def test_telling_the_trial_that_uses_up_a_grid_records_it():
    """Optuna's GridSampler calls study.stop() after the trial that uses up its grid, which raises outside
    Study.optimize; sweeps ask and tell, so their tell keeps the recorded state and goes on."""
    import optuna
    from optuna.trial import TrialState

    def grid_study():
        study = optuna.create_study(sampler=optuna.samplers.GridSampler({"lr": [0.1, 0.01]}, seed=0))
        dist = {"lr": optuna.distributions.CategoricalDistribution([0.1, 0.01])}
        return study, [study.ask(dist) for _ in range(2)]

    study, trials = grid_study()
    study.tell(trials[0], 1.0)
    with pytest.raises(RuntimeError, match="Study.stop"):  # what a plain tell does (why sweep.tell exists)
        study.tell(trials[1], state=TrialState.PRUNED)
    study, trials = grid_study()
    sweep.tell(study, trials[0], 1.0)
    sweep.tell(study, trials[1].number, state=TrialState.PRUNED)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert study.trials[0].value == 1.0


def test_grid_needs_listed_values_and_bad_base_is_refused(tmp_path, monkeypatch, app_home, capsys):
    job_workspace(tmp_path, monkeypatch)
    from cxrcore.demo import app_data

    monkeypatch.setenv("CXR_HOME", str(app_home))
    data = app_data()["nih"]
    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    base = {"data": str(data), "labels": "nih14", "arch": "regnetx_002", "epochs": 1}
    with pytest.raises(ConfigError, match="grid needs listed values"):
        sweep.create(sweep.SweepSpec("g", base, sweep.parse_space("lr = 1e-4 .. 1e-2"), sampler="grid"))
    with pytest.raises(ConfigError, match="epochs"):
        sweep.create(sweep.SweepSpec("g", {**base, "epochs": 0}, sweep.parse_space("lr = 1e-4, 1e-3")))
    # `cxr sweep` through its main in this process (cxr_here): no Python start and optuna import each
    code, _, err = cxr_here(capsys, "sweep", "start", "--data", data, "--labels", "nih14", "--epochs", "1",
                            "--space", "lr = 1e-2 .. 1e-4", "--search", "random")
    assert code == 2 and "low < high" in err and "Traceback" not in err
    code, out, _ = cxr_here(capsys, "sweep", "list")
    assert code == 0 and "no sweeps yet" in out
    assert sweep.list_sweeps() == [] and JobStore().list() == []   # nothing was created


# --------------------------------------------------------------------------- end to end, from the page

def _wait_sweep_done(sweep_id: str, n: int, deadline_s: float = 900.0):
    store = JobStore()
    t_end = time.monotonic() + deadline_s
    while True:
        sweep.advance(sweep_id, store)   # what the page does on every refresh
        table = sweep.results(sweep_id, store)
        if len(table) == n and table["state"].isin(["complete", "pruned", "fail"]).all():
            return table
        if time.monotonic() > t_end:
            logs = "\n".join((Path(j.run_dir) / "log.txt").read_text()[-1500:] for j in store.list(limit=None)
                             if (Path(j.run_dir) / "log.txt").exists())
            pytest.fail(f"sweep not done after {deadline_s:.0f}s:\n{table.to_string()}\n{logs}")
        time.sleep(0.5)


def test_sweep_from_the_page_shows_results_and_clones_the_best(tmp_path, monkeypatch, app_home, capsys):
    from streamlit.testing.v1 import AppTest

    job_workspace(tmp_path, monkeypatch)
    monkeypatch.setenv("CXR_CHECKPOINTS", str(tmp_path / "no-shipped-checkpoints"))
    (tmp_path / "datasets").symlink_to(app_home / "datasets", target_is_directory=True)
    try:
        at = AppTest.from_file(PAGE, default_timeout=180)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        at.radio(key="train_start").set_value("An architecture (timm, tv:, xrv:)").run()
        at.text_input(key="tf_name").set_value("lr-size")
        at.selectbox(key="tf_labels").set_value("nih14")
        at.selectbox(key="tf_arch").set_value("regnetx_002")
        at.number_input(key="tf_epochs").set_value(2)
        at.number_input(key="tf_max_images").set_value(60)
        at.number_input(key="tf_batch_size").set_value(16)
        at.number_input(key="tf_image_size").set_value(64)   # not the form's 160: a trial's steps cost 1/6
        # Two trials, two at a time, and 2 completed trials before any pruning: neither can be pruned whatever
        # the timing (the pruner's logic is tested above, and a pruning report stopping a run in test_job_outcomes).
        at.text_area(key="sweep_space").set_value("lr = 0.003, 0.001")
        at.selectbox(key="sweep_sampler").set_value("grid")
        at.number_input(key="sweep_trials").set_value(2)
        at.number_input(key="sweep_parallel").set_value(2)
        at.selectbox(key="sweep_metric").set_value("loss")
        at.number_input(key="sweep_prune_after").set_value(2)
        at.button(key="train_sweep_submit").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error, [e.value for e in at.error]
        started = [s.value for s in at.success if "Started sweep" in s.value]
        assert started, [s.value for s in at.success]
        sweep_id = sweep.list_sweeps()[0]["id"]
        assert sweep_id in started[0]
        jobs = JobStore().list(limit=None)
        assert len(jobs) == 2 and all(j.config["sweep"]["id"] == sweep_id for j in jobs)  # two at a time

        table = _wait_sweep_done(sweep_id, 2).sort_values("trial")
        assert sorted(table["lr"].tolist()) == [0.001, 0.003], table.to_string()
        assert table["state"].tolist() == ["complete"] * 2, table.to_string()
        assert (table["epochs"] == 2).all()
        assert all(JobStore().get(j).config["monitor"] == "loss" for j in table["job"])  # judged and chosen alike
        good = table.sort_values("best val loss")

        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.subheader[-1].value == "Sweeps"
        assert any("2/2 trials made, 2 at a time" in c.value for c in at.caption), [c.value for c in at.caption]
        shown = at.dataframe[-1].value   # the sweep's trials table is the page's last table
        assert len(shown) == 2 and set(shown["state"]) == {"complete"}
        charts = [c for c in at.get("plotly_chart")]
        assert len(charts) >= 2  # parallel coordinates and option importances (and the job's curves)
        assert any(f"Best trial: job **{good.iloc[0]['job']}**" in s.value for s in at.success)
        at.button(key=f"train_sweep_clone_{sweep_id}").click().run()
        assert not at.exception, [e.value for e in at.exception]
        best_cfg = JobStore().get(good.iloc[0]["job"]).config
        gen = at.session_state["tf_gen"]
        assert gen == 1   # a clone starts a new form generation holding the trial's options
        assert at.number_input(key="tf1_lr").value == pytest.approx(good.iloc[0]["lr"])
        assert at.number_input(key="tf1_image_size").value == best_cfg["image_size"] == 64

        code, out, err = cxr_here(capsys, "sweep", "show", sweep_id, "--csv", tmp_path / "trials.csv")
        assert code == 0, err
        assert f"best trial: job {good.iloc[0]['job']}" in out
        assert (tmp_path / "trials.csv").read_text().count("\n") == 3
    finally:
        kill_jobs(tmp_path)
