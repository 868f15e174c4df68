"""Hyperparameter sweeps: many training jobs over ranges of options, driven by an Optuna study.

A sweep is an Optuna study in the workspace (``sweeps.sqlite``, Optuna's own RDB storage, beside the job
database); its specification (base config, search space, sampler, trials, trials at once, metric,
pruning) is a user attribute of the study. Each trial is an ordinary job (local or Slurm, GPUs honoured,
cancellable and resumable) whose config carries ``sweep`` = where its trial lives; the trial's job
reports each epoch's validation metric to the study and stops early when Optuna's median pruner says so
(:func:`report`, which the job runner hands to the trainer through :func:`trial_reporter`), saying why.

Nothing runs in the background for a sweep: :func:`advance` looks at the trials' jobs, tells the study
the results of ended ones, and starts new trials until ``parallel`` run at once and ``n_trials`` exist.
It is called when a trial's job ends (by the job runner) and whenever the Training page or
``cxr sweep`` looks at the sweep, so a sweep survives an app restart: everything is in the two
databases. A file lock keeps two callers from starting the same trial twice.

A sweep has an owner: whoever created it (:func:`create`'s ``user``; the operator for the CLI), kept in
the study with whether it was created on a shared server. Every trial is launched *as the owner*, whoever
or whatever advances the sweep (the page's visitor, the runner of a trial that ended, ``cxr sweep show``):
its job row records the owner (who may cancel and resume it), the owner's launch right is checked and the
trial counts against the owner's cap of queued + running jobs. While the owner may not launch or is at the
cap no trial starts and the sweep's ``waiting`` says why; the next advance after a slot frees starts it
(the runner of any job of the owner that ends advances their waiting sweeps). Stopping a sweep is
cancelling its owner's work: the owner or an admin (:func:`stop`, :func:`why_not_stop`).

Every trial monitors the sweep's metric (``monitor`` = ``auroc`` or ``loss``): its checkpoint is chosen on,
and each epoch reports, the number the sweep judges it by.

Samplers: ``grid`` (every combination of listed values, Optuna's GridSampler), ``random`` (RandomSampler)
and ``tpe`` (TPESampler). Metric: the run's best validation mean AUROC (maximised) or validation loss
(minimised), the same number the run's checkpoint was chosen on.
"""
from __future__ import annotations

import itertools
import json
import math
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from .. import hosting
from ..errors import AccessError, ConfigError, CXRError, JobError
from ..train.config import opt  # the declaration helper of options (no torch)
from .store import BACKENDS, CapReached, Job, JobStore

SAMPLERS = ("grid", "random", "tpe")
METRICS = {"auroc": "maximize", "loss": "minimize"}
DB_NAME = "sweeps.sqlite"
# The options a sweep may vary: numbers and choices of the training config (not where a job runs).
_NOT_SWEPT = ("name", "data", "init", "monitor", "device", "gpus", "share_gpus", "nproc", "nodes", "threads", "workers",
              "slurm", "labels", "augment_options", "arch_kwargs", "policy", "views", "filters")


@dataclass
class Param:
    """One swept option: a range (``low`` .. ``high``, ``log``) or listed ``values``."""
    name: str
    kind: str                      # float | int | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    values: list = field(default_factory=list)

    def distribution(self):
        import optuna

        if self.values:
            return optuna.distributions.CategoricalDistribution(self.values)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        if self.values:
            return ", ".join(map(str, self.values))
        return f"{self.low:g} .. {self.high:g}" + (" log" if self.log else "")


def spec_field(default, label: str, help: str, flag: str, key: str, flag_help: str = "", **kw):
    """A :class:`SweepSpec` option: its :class:`~cxrcore.train.config.Option` (type, default, bounds, choices,
    label, help; group ``sweep``), its ``cxr sweep start`` flag (``--no-x`` for a bool whose flag turns it off,
    with ``flag_help``) and the Training page's widget key (``sweep_<key>``)."""
    meta = dict(opt(default, label, help, "sweep", **kw).metadata)
    return field(default=default, metadata={**meta, "flag": flag, "key": key, "flag_help": flag_help or help})


@dataclass
class SweepSpec:
    """A sweep, declared once: the fields made with :func:`spec_field` are its options, from which the
    ``cxr sweep start`` flags, the Training page's sweep widgets and :meth:`validate` derive."""

    name: str
    base: dict                                  # the training config every trial starts from
    space: dict[str, Param]
    sampler: str = spec_field("tpe", "Sampler", "how trials are chosen: grid (every combination of listed values), "
                              "random, or tpe (Optuna's TPE sampler, default); --sampler is the training option "
                              "(shuffle / weighted)", "--search", "sampler", choices=SAMPLERS,
                              choice_labels=(("tpe", "TPE (Optuna)"),))
    n_trials: int = spec_field(8, "Trials", "how many trials (a grid stops at its size)", "--trials", "trials",
                               min=1, max=500)
    parallel: int = spec_field(2, "At once", "how many trials run at once", "--parallel", "parallel", min=1, max=64)
    metric: str = spec_field("auroc", "Judged on", "what a trial is judged on: best validation mean AUROC, or "
                             "validation loss", "--metric", "metric", choices=tuple(METRICS),
                             choice_labels=(("auroc", "val mean AUROC"), ("loss", "val loss")))
    prune: bool = spec_field(True, "Prune", "Stop an unpromising trial early: Optuna's median pruner on each "
                             "epoch's validation metric, after the first completed trials (below).", "--no-prune",
                             "prune", flag_help="never stop a trial early (default: Optuna's median pruner on each "
                             "epoch's validation metric)")
    prune_after: int = spec_field(2, "…after completed trials", "completed trials before any trial is pruned",
                                  "--prune-after", "prune_after", min=0, max=100)
    seed: int = 0                               # the training config's seed (`cxr sweep start --seed`)
    backend: str = "local"                      # one of store.BACKENDS: where the trials run (the job's backend)

    def validate(self) -> None:
        """ConfigError when an option breaks its declaration (choices, bounds) or the backend is unknown."""
        from ..train.config import check_option

        for o, _ in spec_options(type(self)):
            check_option(o, getattr(self, o.name))
        if self.backend not in BACKENDS:
            raise ConfigError(f"Sweep backend is one of {', '.join(BACKENDS)}, not {self.backend!r}.")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["space"] = {k: asdict(p) for k, p in self.space.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SweepSpec":
        d = dict(d)
        d["space"] = {k: Param(**p) for k, p in (d.get("space") or {}).items()}
        return cls(**d)

    @property
    def direction(self) -> str:
        return METRICS[self.metric]


def spec_options(cls: type | None = None) -> list[tuple]:
    """``(Option, field metadata)`` of every declared option of :class:`SweepSpec` (or ``cls``), in declaration
    order; the metadata carries ``flag``, ``key`` and ``flag_help``. Reads ``SweepSpec`` when called."""
    from dataclasses import fields

    from ..train.config import options

    cls = cls or SweepSpec
    by_name = {f.name: f.metadata for f in fields(cls)}
    return [(o, by_name[o.name]) for o in options(cls)]


# ------------------------------------------------------------------------------------------ the search space

def sweepable() -> dict:
    """name -> Option of every training option a sweep may vary."""
    from ..train.config import options

    return {o.name: o for o in options() if o.name not in _NOT_SWEPT and not o.custom
            and o.kind in ("int", "float", "choice", "bool")}


_RANGE = re.compile(r"^\s*(?P<low>[-+0-9.eE]+)\s*\.\.\s*(?P<high>[-+0-9.eE]+)\s*(?P<log>log)?\s*$")


def _convert(o, text: str):
    t = text.strip()
    try:
        if o.kind == "int":
            return int(float(t)) if float(t).is_integer() else int(t)
        if o.kind == "float":
            return float(t)
        if o.kind == "bool":
            if t.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError(t)
            return t.lower() in ("true", "1", "yes", "on")
    except ValueError:
        raise ConfigError(f"Sweep: {o.name} takes {o.kind} values; {t!r} is not one.") from None
    if o.choices and t not in o.choices:
        raise ConfigError(f"Sweep: {o.name} is one of {', '.join(map(str, o.choices))}; not {t!r}.")
    return t


def _in_bounds(o, v) -> None:
    lo, hi = getattr(o, "min", None), getattr(o, "max", None)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ConfigError(f"Sweep: {o.name} = {v:g} is outside its bounds [{lo}, {hi}].")


def parse_space(text: str | list[str]) -> dict[str, Param]:
    """The search space from lines ``option = low .. high [log]`` (a range, for random / TPE) or
    ``option = v1, v2, ...`` (listed values, for any sampler). ConfigError says what is wrong with which line."""
    lines = text.splitlines() if isinstance(text, str) else list(text)
    known = sweepable()
    space: dict[str, Param] = {}
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise ConfigError(f"Sweep: {raw.strip()!r} is not `option = values` (e.g. `lr = 1e-4 .. 1e-2 log` "
                              "or `image_size = 48, 64`).")
        name, rhs = (s.strip() for s in line.split("=", 1))
        if name not in known:
            raise ConfigError(f"Sweep: {name!r} is not an option a sweep can vary; these can: "
                              f"{', '.join(sorted(known))}.")
        if name in space:
            raise ConfigError(f"Sweep: {name} is given twice.")
        o = known[name]
        m = _RANGE.match(rhs)
        if m and o.kind in ("int", "float"):
            low, high = float(m["low"]), float(m["high"])
            if not low < high:
                raise ConfigError(f"Sweep: the range of {name} needs low < high ({rhs}).")
            if m["log"] and low <= 0:
                raise ConfigError(f"Sweep: a log range of {name} needs low > 0 ({rhs}).")
            for v in (low, high):
                _in_bounds(o, v)
            if o.kind == "int" and not (low.is_integer() and high.is_integer()):
                raise ConfigError(f"Sweep: {name} takes whole numbers ({rhs}).")
            space[name] = Param(name, o.kind, low, high, bool(m["log"]))
        elif m:
            raise ConfigError(f"Sweep: {name} is a {o.kind} option; list its values instead of a range.")
        else:
            values = [_convert(o, v) for v in rhs.split(",") if v.strip()]
            if not values:
                raise ConfigError(f"Sweep: {name} has no values.")
            for v in values:
                _in_bounds(o, v)
            space[name] = Param(name, "choice" if o.kind in ("choice", "bool") else o.kind,
                                values=list(dict.fromkeys(values)))
    if not space:
        raise ConfigError("Sweep: give at least one option to vary, one per line (e.g. `lr = 1e-4 .. 1e-2 log`).")
    return space


def grid_size(space: dict[str, Param]) -> int:
    return math.prod(len(p.values) for p in space.values())


# ------------------------------------------------------------------------------------------ storage

def db_path(store: JobStore | None = None) -> Path:
    return (store or JobStore()).path.parent / DB_NAME


def _storage(path: Path):
    import optuna

    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 60}})


def _quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _lock(path: Path, sweep_id: str):
    """One caller at a time advances a sweep (across the app's threads, CLIs and job runners)."""
    from ..workspace import file_lock

    return file_lock(path.parent / f".{DB_NAME}.{sweep_id}.lock")


def _sampler(spec: SweepSpec, n_made: int):
    import optuna

    if spec.sampler == "grid":
        return optuna.samplers.GridSampler({k: p.values for k, p in spec.space.items()}, seed=spec.seed)
    if spec.sampler == "random":  # reseeded per trial: a reloaded sampler must not repeat the first draw
        return optuna.samplers.RandomSampler(seed=spec.seed + n_made)
    return optuna.samplers.TPESampler(seed=spec.seed + n_made, n_startup_trials=max(2, min(10, spec.n_trials // 3)))


def _pruner(spec: SweepSpec):
    import optuna

    if not spec.prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=spec.prune_after, n_warmup_steps=0)


def load(sweep_id: str, store: JobStore | None = None, n_made: int = 0):
    """(study, spec) of a sweep; JobError when there is none of that id."""
    import optuna

    _quiet()
    path = db_path(store)
    if not path.exists():
        raise JobError(f"No sweep {sweep_id!r}: this workspace has no sweeps yet.")
    storage = _storage(path)
    try:
        study = optuna.load_study(study_name=sweep_id, storage=storage)
    except KeyError:
        raise JobError(f"No sweep {sweep_id!r} in {path}.") from None
    spec = SweepSpec.from_dict(study.user_attrs["spec"])
    study = optuna.load_study(study_name=sweep_id, storage=storage,
                              sampler=_sampler(spec, n_made or len(study.trials)), pruner=_pruner(spec))
    return study, spec


def list_sweeps(store: JobStore | None = None) -> list[dict]:
    """Every sweep of the workspace, newest first: id, name, created, trials made / planned, best value."""
    import optuna

    _quiet()
    path = db_path(store)
    if not path.exists():
        return []
    out = []
    for s in optuna.study.get_all_study_summaries(_storage(path), include_best_trial=False):
        spec = s.user_attrs.get("spec") or {}
        out.append({"id": s.study_name, "name": spec.get("name", ""), "created": s.user_attrs.get("created", 0),
                    "trials": s.n_trials, "planned": spec.get("n_trials"), "metric": spec.get("metric"),
                    "stopped": bool(s.user_attrs.get("stopped")),
                    "owner": (s.user_attrs.get("owner") or {}).get("id"), "waiting": s.user_attrs.get("waiting")})
    return sorted(out, key=lambda r: -float(r["created"] or 0))


# ------------------------------------------------------------------------------------------ owner and rights

@dataclass(frozen=True)
class _Rights:
    """What :func:`cxrcore.hosting.why_not` reads of the thing acted on: its id and its owner."""
    id: str
    owner: str | None


def owner(study, store: JobStore | None = None) -> hosting.User:
    """Who a sweep's trials are launched as: the user recorded by :func:`create`. A sweep created before
    sweeps recorded their owner: the owner of its first trial's job (the operator when that is the OS
    user, or when no trial's job records one)."""
    rec = study.user_attrs.get("owner")
    if isinstance(rec, dict) and rec.get("id"):
        return hosting.User(id=str(rec["id"]), name=str(rec.get("name") or ""), signed_in=bool(rec.get("signed_in")),
                            operator=bool(rec.get("operator")))
    op = hosting.operator_user()
    store = store or JobStore()
    for t in sorted(study.trials, key=lambda t: t.number):
        job = _job_of(t, store)
        if job is not None and job.owner:
            if job.owner == op.id:
                return op
            return hosting.User(id=job.owner, name=hosting.owner_display(job.owner),
                                signed_in=not hosting.is_anonymous(job.owner))
    return op


def _settings_for(study, settings: hosting.Settings | None) -> hosting.Settings:
    """The operator's settings for launching this sweep's trials: read now (or the caller's), with the
    shared-server defaults kept on for a sweep created on a shared server, so the job runner and the CLI
    (which see no request) cap and check its trials as the page that started it did."""
    s = settings or hosting.settings()
    if study.user_attrs.get("hosted") and not s.hosted:
        s = replace(s, hosted_flag=True)
    return s


def _why_not_stop(study, sweep_id: str, user: hosting.User | None, store: JobStore,
                  settings: hosting.Settings | None) -> str | None:
    if user is None:  # the CLI, Python on this machine: the operator
        return None
    who = owner(study, store)
    if hosting.why_not(user, "cancel", _Rights(sweep_id, who.id), settings or hosting.settings()) is None:
        return None
    return (f"Sweep {sweep_id} was started by {who.display}; only they or an admin (CXR_JOB_ADMINS) may stop it "
            "or cancel its trials.")


def why_not_stop(sweep_id: str, user: hosting.User | None, store: JobStore | None = None,
                 settings: hosting.Settings | None = None) -> str | None:
    """None when ``user`` may stop the sweep, else the reason: the same right as cancelling one of its jobs
    (its owner or an admin; the operator and one person's own machine: anyone). ``user=None``: the operator."""
    store = store or JobStore()
    study, _ = load(sweep_id, store)
    return _why_not_stop(study, sweep_id, user, store, settings)


# ------------------------------------------------------------------------------------------ running

def create(spec: SweepSpec, store: JobStore | None = None, user: hosting.User | None = None,
           settings: hosting.Settings | None = None) -> str:
    """Check the spec, create its study and start the first trials; returns the sweep id.

    ``user`` (default: the operator) becomes the sweep's owner: every trial is launched as them (see the
    module's doc); AccessError when they may not launch jobs. The base config is checked as a job would
    be (every trial's config is checked again when it starts)."""
    import optuna

    from .config import check_config

    _quiet()
    who = user or hosting.operator_user()
    s = settings or hosting.settings()
    hosting.check_may(who, "launch", None, s)
    spec.validate()   # its declaration's choices and bounds, as the CLI and the page check them
    if spec.sampler == "grid":
        ranged = [k for k, p in spec.space.items() if not p.values]
        if ranged:
            raise ConfigError(f"A grid needs listed values; {', '.join(ranged)} are ranges. List values "
                              "(`lr = 1e-4, 1e-3`) or choose random or TPE.")
        spec.n_trials = min(spec.n_trials, grid_size(spec.space))
    # A trial's checkpoint is chosen on, and its epochs reported by, the metric the sweep judges it on.
    spec.base = {**spec.base, "monitor": spec.metric}
    first = {k: (p.values[0] if p.values else (p.low if p.kind == "float" else int(p.low))) for k, p in spec.space.items()}
    check_config({**spec.base, **first}, s, user=who)  # a visitor's restricted slurm options too
    store = store or JobStore()
    path = db_path(store)
    sweep_id = "sweep-" + time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    study = optuna.create_study(study_name=sweep_id, storage=_storage(path), direction=spec.direction,
                                sampler=_sampler(spec, 0), pruner=_pruner(spec))
    study.set_user_attr("spec", spec.to_dict())
    study.set_user_attr("created", time.time())
    study.set_user_attr("owner", {"id": who.id, "name": who.name, "signed_in": who.signed_in,
                                  "operator": who.operator})
    study.set_user_attr("hosted", s.hosted)
    advance(sweep_id, store, settings=settings)
    return sweep_id


def _job_of(trial, store: JobStore) -> Job | None:
    job_id = trial.user_attrs.get("job_id")
    if not job_id:
        return None
    try:
        return store.get(job_id)
    except CXRError:
        return None


def run_result(job: Job, metric: str) -> tuple[float | None, str | None]:
    """(best validation value, pruned reason or None) of an ended trial's run, from its checkpoint card."""
    from ..checkpoint import read_card

    try:
        card = read_card(Path(job.run_dir) / "checkpoint")
    except CXRError:
        return None, None
    val = card.metrics.get("val", {})
    v = val.get("mean_auroc") if metric == "auroc" else val.get("loss")
    return (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)), card.training.get("pruned")


def tell(study, trial, values=None, state=None) -> None:
    """``study.tell`` outside ``Study.optimize`` (this module asks and tells): Optuna's GridSampler calls
    ``study.stop()`` after the trial that uses up its grid, which raises RuntimeError outside an optimize
    loop. The trial's state and value are stored before that (Optuna stores them in a ``finally``), and a
    used-up grid is what this module checks itself (``n_trials`` and repeated grid points), so that error
    is ignored; any other is not."""
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def _at_cap(who: hosting.User, count: int, cap: int) -> str:
    return (f"waiting for a free job slot: {who.display} has {count} job(s) queued or running and this server "
            f"allows {cap} per person at once ({hosting.ENV_MAX_JOBS}); the next trial starts when one of them ends.")


def advance(sweep_id: str, store: JobStore | None = None, user: hosting.User | None = None,
            settings: hosting.Settings | None = None) -> list[str]:
    """Record ended trials in the study and start new ones (see the module's doc); returns new job ids.

    New trials are launched as the sweep's :func:`owner`, within the owner's launch right and cap, with
    ``settings`` (default: read now; a sweep created on a shared server keeps its defaults). ``user``, who
    is looking (the page's visitor), grants and costs nothing: anyone may look at a sweep. When the owner
    may not launch now, or has their cap of queued + running jobs, no trial starts and no error is
    raised: the sweep's ``waiting`` (``list_sweeps``, the page) says why, and a later advance starts it."""
    import optuna
    from optuna.trial import TrialState

    from . import dispatch

    del user  # looking at a sweep launches nothing in the viewer's name
    store = store or JobStore()
    path = db_path(store)
    started = []
    with _lock(path, sweep_id):
        study, spec = load(sweep_id, store)
        active = 0
        pending = []  # asked trials whose job the cap kept out (the owner launched elsewhere meanwhile)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            job = _job_of(t, store)
            if job is None:
                if t.user_attrs.get("pending"):
                    pending.append(t)
                elif time.time() - float(t.user_attrs.get("asked", 0)) > 120:  # asked, but its job never came
                    tell(study, t.number, state=TrialState.FAIL)
                continue
            if job.status == "succeeded":
                value, pruned = run_result(job, spec.metric)
                if pruned:
                    optuna.trial.Trial(study, t._trial_id).set_user_attr("pruned", pruned)
                    tell(study, t.number, state=TrialState.PRUNED)
                elif value is None:
                    tell(study, t.number, state=TrialState.FAIL)
                else:
                    tell(study, t.number, value)
            elif job.status == "failed":
                tell(study, t.number, state=TrialState.FAIL)
            elif job.active:
                active += 1
            # cancelled: left running in the study (it can be resumed) but no longer counted as at work
        n_made = len(study.trials)
        if study.user_attrs.get("stopped"):
            for t in pending:
                optuna.trial.Trial(study, t._trial_id).set_user_attr(
                    "error", "The sweep was stopped before this trial's job could start.")
                tell(study, t.number, state=TrialState.FAIL)
            if study.user_attrs.get("waiting"):
                study.set_user_attr("waiting", None)
            return started
        who = owner(study, store)
        s = _settings_for(study, settings)
        refused = hosting.why_not(who, "launch", None, s)
        waiting = (f"no new trials while the sweep's owner ({who.display}) may not launch jobs: {refused}"
                   if refused else None)
        cap = hosting.cap_for(who, s)
        while waiting is None and active < spec.parallel and (pending or n_made < spec.n_trials):
            count = store.count_active(lambda o: hosting.same_person(o, who)) if cap else 0
            if cap and count >= cap:
                waiting = _at_cap(who, count, cap)
                break
            if pending:
                t = pending.pop(0)
                trial, number, params = optuna.trial.Trial(study, t._trial_id), t.number, t.params
            else:
                study, spec = load(sweep_id, store, n_made)
                dists = {k: p.distribution() for k, p in spec.space.items()}
                trial = study.ask(dists)
                if spec.sampler == "grid" and trial.params in [t.params for t in study.trials[:-1]]:
                    tell(study, trial, state=TrialState.FAIL)  # the grid is exhausted
                    study.set_user_attr("stopped", True)
                    break
                trial.set_user_attr("asked", time.time())
                number, params = trial.number, trial.params
                n_made += 1
            config = {**spec.base, **params,
                      "sweep": {"id": sweep_id, "db": str(path), "trial": number, "trial_id": trial._trial_id,
                                "metric": spec.metric}}
            name = f"{spec.name or sweep_id} · trial {number}"
            try:
                job = dispatch.submit(config, name=name, store=store, backend=spec.backend, user=who, settings=s)
            except CapReached as exc:  # the owner launched elsewhere since the count: the trial waits its turn
                trial.set_user_attr("pending", True)
                waiting = _at_cap(who, exc.count, exc.cap)
            except CXRError as exc:  # this combination cannot run: the trial fails, saying why
                trial.set_user_attr("error", str(exc)[:500])
                tell(study, number, state=TrialState.FAIL)
            else:
                trial.set_user_attr("job_id", job.id)
                trial.set_user_attr("pending", False)
                started.append(job.id)
                active += 1
        if waiting != study.user_attrs.get("waiting"):
            study.set_user_attr("waiting", waiting)
    return started


def advance_waiting(job_owner: str | None, store: JobStore | None = None) -> list[str]:
    """Advance the sweeps of ``job_owner`` that wait (for a free slot); called when one of their jobs ended.
    Returns the new trials' job ids."""
    store = store or JobStore()
    if not job_owner or not db_path(store).exists():
        return []
    person = hosting.User(id=job_owner)
    started: list[str] = []
    for row in list_sweeps(store):
        if row["waiting"] and not row["stopped"] and row["owner"] and hosting.same_person(row["owner"], person):
            started += advance(row["id"], store)
    return started


def stop(sweep_id: str, store: JobStore | None = None, cancel_running: bool = False, user: hosting.User | None = None,
         settings: hosting.Settings | None = None) -> None:
    """No new trials; with ``cancel_running`` also cancel the trials at work.

    ``user`` (default: the operator) needs the right to cancel the sweep's jobs (:func:`why_not_stop`: its
    owner or an admin): AccessError otherwise, and nothing changes."""
    from . import dispatch

    store = store or JobStore()
    study, _ = load(sweep_id, store)
    reason = _why_not_stop(study, sweep_id, user, store, settings)
    if reason is not None:
        raise AccessError(reason)
    study.set_user_attr("stopped", True)
    if cancel_running:
        for t in study.trials:
            job = _job_of(t, store)
            if job is not None and job.active:
                dispatch.cancel(job.id, store, user=user, settings=settings)


def report(sweep: dict, epoch: int, value: float) -> str | None:
    """Called by a trial's training after each epoch's validation: report the value to the study; the
    reason to stop when Optuna's pruner says the trial is unpromising, else None."""
    import optuna

    _quiet()
    if value is None:
        return None
    storage = _storage(Path(sweep["db"]))  # a NaN value is reported too: the median pruner prunes it
    study = optuna.load_study(study_name=sweep["id"], storage=storage)
    spec = SweepSpec.from_dict(study.user_attrs["spec"])
    study = optuna.load_study(study_name=sweep["id"], storage=storage, pruner=_pruner(spec))
    trial = optuna.trial.Trial(study, int(sweep["trial_id"]))
    try:
        trial.report(float(value), int(epoch))
    except (RuntimeError, ValueError):  # the trial has ended in the study (e.g. told from elsewhere)
        return None
    if not trial.should_prune():
        return None
    from optuna.trial import TrialState

    done = [t.intermediate_values.get(int(epoch)) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    done = [v for v in done if v is not None]
    what = "validation mean AUROC" if spec.metric == "auroc" else "validation loss"
    median = f" {sorted(done)[len(done) // 2]:.4f}" if done else ""
    return (f"pruned by the sweep after epoch {epoch}: its {what} {value:.4f} is "
            f"{'below' if spec.direction == 'maximize' else 'above'} the median{median} of the completed trials "
            "at that epoch (Optuna's MedianPruner)")


def trial_reporter(cfg) -> Callable[[int, float], str | None] | None:
    """The per-epoch ``report`` a trial's training is given (``train(..., report=...)``): :func:`report` to the
    trial's study, for a config whose ``sweep`` names one; None for a config of no sweep."""
    sweep = getattr(cfg, "sweep", None) if not isinstance(cfg, dict) else cfg.get("sweep")
    if not sweep:
        return None
    return lambda epoch, value: report(sweep, epoch, value)


# ------------------------------------------------------------------------------------------ results

def results(sweep_id: str, store: JobStore | None = None):
    """One row per trial: trial, job, state, the swept options, best validation metric, epochs, seconds, note."""
    import pandas as pd

    store = store or JobStore()
    study, spec = load(sweep_id, store)
    rows = []
    for t in study.trials:
        job = _job_of(t, store)
        state = t.state.name.lower()
        if job is not None and t.state.name == "RUNNING":
            state = job.status if job.status != "succeeded" else "finishing"
        elif t.state.name == "RUNNING" and t.user_attrs.get("pending"):
            state = "waiting"  # asked, its job kept out by the owner's cap; the next advance starts it
        note = t.user_attrs.get("pruned") or t.user_attrs.get("error") or (job.error if job is not None else "") or ""
        if state == "waiting":
            note = study.user_attrs.get("waiting") or "waiting for a free job slot"
        epochs = None
        if job is not None:
            try:
                from ..checkpoint import read_card

                epochs = read_card(Path(job.run_dir) / "checkpoint").training.get("epochs_run")
            except CXRError:
                epochs = None
        value = t.value if t.value is not None else (
            run_result(job, spec.metric)[0] if job is not None and job.status == "succeeded" else None)
        rows.append({"trial": t.number, "job": t.user_attrs.get("job_id", ""), "state": state,
                     **{k: t.params.get(k) for k in spec.space},
                     f"best val {'AUROC' if spec.metric == 'auroc' else 'loss'}": value, "epochs": epochs,
                     "seconds": None if job is None or job.duration is None else round(job.duration, 1),
                     "note": note})
    return pd.DataFrame(rows)


def best_job(sweep_id: str, store: JobStore | None = None) -> Job | None:
    """The job of the best completed trial (None before one completes)."""
    store = store or JobStore()
    study, _ = load(sweep_id, store)
    try:
        best = study.best_trial
    except ValueError:
        return None
    return _job_of(best, store)


def figures(sweep_id: str, store: JobStore | None = None) -> dict:
    """Optuna's plotly figures: ``parallel`` (parallel coordinates) and ``importance`` (fANOVA option
    importances); a figure Optuna cannot draw yet (too few completed trials) is a sentence saying why."""
    from optuna import visualization as vis

    study, spec = load(sweep_id, store)
    out = {}
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    target = "best val AUROC" if spec.metric == "auroc" else "best val loss"
    if complete:
        out["parallel"] = vis.plot_parallel_coordinate(study, target_name=target)
    else:
        out["parallel"] = "The parallel-coordinates plot appears when a trial has completed."
    if len(complete) >= 2 and len(spec.space) >= 1:
        try:
            out["importance"] = vis.plot_param_importances(study, target_name=target)
        except (RuntimeError, ValueError) as exc:
            out["importance"] = f"Option importances are not available yet: {exc}"
    else:
        out["importance"] = "Option importances appear when two trials have completed."
    return out


def grid_combinations(space: dict[str, Param]) -> list[dict]:
    """Every combination of a grid (for a preview)."""
    keys = list(space)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(space[k].values for k in keys))]


def to_json(spec: SweepSpec) -> str:
    return json.dumps(spec.to_dict(), indent=2)


__all__ = ["METRICS", "SAMPLERS", "Param", "SweepSpec", "advance", "advance_waiting", "best_job", "create", "figures",
           "grid_size", "list_sweeps", "load", "owner", "parse_space", "report", "results", "stop", "sweepable",
           "trial_reporter", "why_not_stop"]
