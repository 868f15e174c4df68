"""``cxr sweep``: the training flags as for ``cxr train``, the sweep's own flags derived from SweepSpec's
declaration (cxrcore/jobs/sweep.py)."""
from __future__ import annotations

from pathlib import Path

from ..errors import CXRError
from ..launch import sweep_spec
from .common import Command, add_backend_flag, add_slurm_flags, slurm_values
from .train import train_config

SPEC_DEST = "sweep_"  # a SweepSpec option's argparse dest: sweep_<field> (--search and --sampler both exist)


def add_spec_flags(s) -> None:
    """One flag per declared SweepSpec option (its ``flag``; a bool's ``--no-x`` turns it off), with the
    declared default, choices and help."""
    from ..jobs import sweep

    for o, meta in sweep.spec_options():
        flag, kw = meta["flag"], {"dest": SPEC_DEST + o.name, "default": o.default, "help": meta["flag_help"]}
        if o.kind == "bool":
            s.add_argument(flag, action="store_false" if flag.startswith("--no-") else "store_true", **kw)
        elif o.kind == "choice":
            s.add_argument(flag, choices=list(o.choices), **kw)
        else:
            s.add_argument(flag, type={"int": int, "float": float}.get(o.kind, str),
                           metavar=flag[2:].upper().replace("-", "_"), **kw)


def spec_values(a) -> dict:
    """The declared SweepSpec options as given on the command line (or their defaults), by field name."""
    from ..jobs import sweep

    return {o.name: getattr(a, SPEC_DEST + o.name) for o, _ in sweep.spec_options()}


def cmd_sweep(a) -> int:
    from ..jobs import sweep

    if a.action == "start":
        from dataclasses import asdict

        if not a.space:
            raise CXRError("Give the options to vary with --space, e.g. --space 'lr = 1e-4 .. 1e-2 log' "
                           "--space 'image_size = 48, 64'.")
        cfg = train_config(a)
        cfg.validate()
        space = sweep.parse_space(a.space)
        base = {k: v for k, v in asdict(cfg).items() if k != "sweep"}
        if a.backend == "slurm":
            base["slurm"] = {**(base.get("slurm") or {}), **slurm_values(a, visitor_safe=True)}
        seed = {} if a.seed is None else {"seed": a.seed}  # the training --seed; SweepSpec's default otherwise
        spec = sweep_spec(spec_values(a), name=a.name or f"sweep of {Path(a.data).name}", base=base, space=space,
                          backend=a.backend, **seed)
        sweep_id = sweep.create(spec)
        print(f"started sweep {sweep_id}: {spec.n_trials} trials, {spec.parallel} at a time, {spec.sampler} over "
              + "; ".join(f"{k} = {p.describe()}" for k, p in space.items())
              + f". Watch it with `cxr sweep show {sweep_id}` or on the Training page.")
        return 0
    if a.action == "list":
        rows = sweep.list_sweeps()
        if not rows:
            print("no sweeps yet")
        for r in rows:
            print(f"{r['id']}  {r['name']}  {r['trials']}/{r['planned']} trials  metric {r['metric']}"
                  + ("  (stopped)" if r["stopped"] else ""))
        return 0
    if not a.sweep:
        raise CXRError(f"`cxr sweep {a.action}` needs the sweep's id (see `cxr sweep list`).")
    if a.action == "stop":
        sweep.stop(a.sweep, cancel_running=a.cancel_running)
        print(f"sweep {a.sweep}: no new trials" + ("; its running trials were cancelled" if a.cancel_running else ""))
        return 0
    started = sweep.advance(a.sweep)
    table = sweep.results(a.sweep)
    if started:
        print(f"started trial job(s) {', '.join(started)}")
    if a.csv:
        table.to_csv(a.csv, index=False)
        print(f"wrote {a.csv}")
    print(table.to_string(index=False) if len(table) else "no trials yet")
    best = sweep.best_job(a.sweep)
    if best is not None:
        print(f"best trial: job {best.id} ({best.name}); checkpoint {Path(best.run_dir) / 'checkpoint'}")
    return 0


def _sweep_flags(s) -> None:
    from ..train import config as train_config_module

    s.add_argument("action", choices=["start", "list", "show", "stop"])
    s.add_argument("sweep", nargs="?", help="show / stop: the sweep's id")
    train_config_module.add_cli_flags(s, train_config_module.TrainConfig)
    s.add_argument("--output-stride", type=int, choices=[8, 16, 32], help="as for `cxr train`")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="as for `cxr train`")
    s.add_argument("--space", action="append", metavar="'OPTION = LOW .. HIGH [log]' | 'OPTION = V1, V2'",
                   help="an option to vary (repeatable): a range (random / TPE) or listed values (any sampler)")
    add_spec_flags(s)
    add_backend_flag(s)
    add_slurm_flags(s, visitor_safe=True)
    s.add_argument("--csv", help="show: also write the trials table to this CSV file")
    s.add_argument("--cancel-running", action="store_true", help="stop: also cancel the trials at work")
    s.set_defaults(func=cmd_sweep)


SWEEP = Command("sweep", "hyperparameter sweeps: many training jobs over ranges of options (Optuna)", _sweep_flags,
                description="start: the training options below are the base of every trial (as for "
                            "`cxr train`); --space lines name what varies. show: the trials table (and "
                            "starts due trials); list; stop.")
