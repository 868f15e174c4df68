"""Checks of a training job's config before anything is created: options, data, init checkpoint, placement.

``check_config(config)`` is what every backend runs first (and what the Training page can run to
check a form): it returns the config normalised (defaults filled in, paths absolute) or raises
ConfigError / DataError / CheckpointError with a message that says what to change. Importing this
module does not import torch; calling ``check_config`` does.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from ..errors import ConfigError
from ..hosting import RESTRICTED_SLURM_OPTIONS  # who may set which: the operator's policy
from .lensjobs import check_lens_config
from .scoring import LENS_TASKS, SCORE, WATCH, check_score_config, check_watch_config, task_of


def check_config(config: dict, settings=None, user=None) -> dict:
    """Validate a training config without starting anything; returns it normalised. A scoring job's config
    (``task`` = ``score``) is checked by :func:`cxrcore.jobs.scoring.check_score_config` instead.

    Normalised: every option present (defaults filled in), ``data`` and ``init`` as absolute
    paths (the runner's working directory is the run folder). Raises ConfigError for bad
    options (unknown option, epochs < 1, unknown labels, mode, policy, device, architecture,
    pretrained), DataError for a data folder that is missing or holds no label table, and
    CheckpointError for an ``init`` that is not a checkpoint. AccessError for a ``data`` or ``init``
    folder outside the folders the operator lets jobs read (``CXR_DATA_ROOTS`` and the workspace;
    :func:`cxrcore.hosting.check_job_paths`, with ``settings`` or the environment's), whoever calls.
    The ``slurm`` options must each match their declared form (:data:`SLURM_OPTIONS`; ConfigError
    naming the option), whoever calls; ``user``, a visitor of a shared server (None: the operator),
    may set ``account``, ``extra`` and ``conf`` only where the operator allows (AccessError,
    :func:`check_slurm_rights`); nor ask for more processes, workers, batch or image size than the
    operator's ceilings (AccessError naming the setting, :func:`check_job_resources`).
    """
    from .. import hosting

    from ..train.checks import check_training, check_types
    from ..train.config import TrainConfig

    if not isinstance(config, dict):
        raise ConfigError(f"A training config is a dict of options, not {type(config).__name__}.")
    task = task_of(config)
    if task == SCORE:   # a scoring job (cxr score as a job): its own options
        return check_score_config(config, settings, user)
    if task == WATCH:   # scoring new PACS studies as they arrive
        return check_watch_config(config, settings, user)
    if task in LENS_TASKS:   # an index of the dataset, or its label errors by cross-fitting
        return check_lens_config(config, settings, user)
    if not config.get("data"):
        raise ConfigError("The training config needs `data`: the dataset folder to train on.")
    settings = settings or hosting.settings()
    hosting.check_job_paths(config, settings)  # before anything reads the folder
    check_slurm_rights(config, user, settings)
    if user is not None and not user.operator:  # a visitor's model names and folders (hosting.check_model_ref)
        hosting.check_model_ref(config.get("init"), settings)
        hosting.check_model_ref(config.get("arch"), settings, arch=True)
    try:
        cfg = TrainConfig.from_dict(dict(config))
    except TypeError as exc:
        raise ConfigError(f"Invalid training options: {exc}.") from exc
    check_types(cfg)
    _check_placement(cfg)
    _check_resources(lambda name: getattr(cfg, name), hosting.limits(settings, user))  # a visitor's job: ceilings
    cfg = check_training(cfg)  # what train() itself checks: options, data, init, model and image size
    out = asdict(cfg)
    try:
        json.dumps(out)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"The training config must be plain JSON values: {exc}.") from exc
    return out


# --------------------------------------------------------------------------- slurm options
#
# A slurm value is written into the job's sbatch script as one `#SBATCH --option=value` line. sbatch
# reads every whitespace-separated word of such a line as an option of its own (and `#` starts a
# comment, quotes group), so a value is only ever written when it matches its option's pattern whole:
# Slurm's own syntax for it, no whitespace, quotes, `#`, `%`, `$` or control characters. The
# declarations below are the one place the options, their forms and who may set them are written;
# check_config, render_script (cxrcore.jobs.slurm), the CLI's flags and the Training page read them.

_NAME = r"[A-Za-z0-9_.-]+"  # a partition, account or feature name as Slurm writes them
MAX_SLURM_VALUE_CHARS = 256  # longer than any name, limit or path a job needs


@dataclass(frozen=True)
class SlurmOption:
    """One option of a training config's ``slurm`` dict."""

    name: str
    types: tuple            # the Python types a value may have
    what: str               # what it is (help texts)
    form: str               # the accepted form, in words (help texts and error messages)
    pattern: str = ""       # a text value must match it whole (re.fullmatch); "" : no text value
    sbatch: str = ""        # the sbatch option it is written as (one `#SBATCH --x=value` line); "" : not written
    example: str = ""       # a placeholder for a form field
    minimum: int = 1        # a whole-number value's least

    @property
    def restricted(self) -> bool:
        """A visitor of a shared server sets it only where the operator allows (hosting.RESTRICTED_SLURM_OPTIONS)."""
        return self.name in RESTRICTED_SLURM_OPTIONS

    @property
    def help(self) -> str:
        return f"{self.what}: {self.form}"


@dataclass(frozen=True)
class ExtraOption:
    """An sbatch option that ``slurm.extra`` may carry: only where the job runs or who is told, nothing
    that changes its limits, priority, files, environment or the operator's accounting."""

    name: str               # the long option, without the leading --
    pattern: str = ""       # its value's pattern; "" : a flag that takes no value
    form: str = ""          # the value's form, in words
    flag_too: bool = False  # with a pattern: may also be given without a value


_HOSTLIST = r"[A-Za-z0-9_.,\[\]-]+"  # node names and ranges: node[01-04,07],gpu3
_MAIL_TYPES = ("NONE", "BEGIN", "END", "FAIL", "REQUEUE", "ALL", "INVALID_DEPEND", "STAGE_OUT", "TIME_LIMIT",
               "TIME_LIMIT_90", "TIME_LIMIT_80", "TIME_LIMIT_50", "ARRAY_TASKS")

# Not here on purpose: --qos and --reservation (the priority and limits the cluster grants the service
# account, not the person), --account / --partition / --time / --mem (options of their own, checked),
# --array, --nodes, --ntasks, --gres, --gpus (more of the cluster than the job asked for),
# --output / --error / --open-mode / --chdir / --export / --export-file / --get-user-env (files and the
# environment of the service account), --signal (the runner's cancel protocol), --dependency, --wrap,
# --uid / --gid, --clusters (another cluster), --priority / --nice, --comment and free text.
EXTRA_OPTIONS = {o.name: o for o in (
    ExtraOption("constraint", r"[A-Za-z0-9_.&|,*()\[\]-]+", "node features, e.g. a100 or 'intel&ib' (no spaces)"),
    ExtraOption("exclude", _HOSTLIST, "a host list, e.g. node[01-04],node07"),
    ExtraOption("nodelist", _HOSTLIST, "a host list, e.g. node[01-04],node07"),
    ExtraOption("exclusive", "user|mcs|topo", "user, mcs or topo", flag_too=True),
    ExtraOption("gres-flags", "enforce-binding|disable-binding", "enforce-binding or disable-binding"),
    ExtraOption("mail-type", rf"({'|'.join(_MAIL_TYPES)})(,({'|'.join(_MAIL_TYPES)}))*",
                f"a comma list of {', '.join(_MAIL_TYPES)}"),
    ExtraOption("mail-user", r"[A-Za-z0-9._+-]+(@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*)?", "an e-mail address or user name"),
    ExtraOption("hold"),
)}

_TIME = (r"\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}"
         r"|(?i:UNLIMITED|INFINITE)")

SLURM_OPTIONS = {o.name: o for o in (
    SlurmOption("partition", (str,), "partition",
                "a partition name (letters, digits, _ . -) or a comma list of them, e.g. gpu or gpu,debug",
                pattern=rf"{_NAME}(,{_NAME})*", sbatch="--partition", example="gpu"),
    SlurmOption("cpus", (int,), "CPUs per task (also the job's torch/OpenMP threads)", "a whole number, at least 1",
                sbatch="--cpus-per-task", example="8"),
    SlurmOption("mem", (str, int), "memory per node",
                "a whole number of MiB (at least 1), or one with a unit K, M, G or T, e.g. 16G or 500",
                pattern=r"[1-9]\d*[KMGTkmgt]?", sbatch="--mem", example="32G"),
    SlurmOption("time", (str, int), "time limit",
                "Slurm's M, M:S, H:M:S, D-H, D-H:M or D-H:M:S (e.g. 4:00:00 or 1-12), UNLIMITED / INFINITE, "
                "or a whole number of minutes (at least 1)",
                pattern=_TIME, sbatch="--time", example="4:00:00"),
    SlurmOption("account", (str,), "account to charge", "an account name (letters, digits, _ . -)",
                pattern=_NAME, sbatch="--account", example="rad"),
    SlurmOption("extra", (list, str), "more sbatch options",
                "a list of items of one word each: --option=value with the option one of "
                + ", ".join(f"--{o.name}" for o in EXTRA_OPTIONS.values() if o.pattern)
                + ", or the flag " + " or ".join(f"--{o.name}" for o in EXTRA_OPTIONS.values() if o.flag_too
                                                 or not o.pattern),
                example="--constraint=a100"),
    SlurmOption("conf", (str,), "the cluster's slurm.conf",
                "an absolute path (default: $SLURM_CONF or Slurm's own default)", pattern=r"/[^\x00-\x1f\x7f]*"),
)}
if not set(RESTRICTED_SLURM_OPTIONS) <= set(SLURM_OPTIONS):
    raise RuntimeError(f"cxrcore.hosting restricts slurm options not declared here: {RESTRICTED_SLURM_OPTIONS}")


def _refuse(key: str, value, why: str = "") -> ConfigError:
    o = SLURM_OPTIONS[key]
    return ConfigError(f"slurm option {key} ({o.what}) {why or 'is not accepted'}: {value!r}. It must be {o.form}.")


def _extra_token(item) -> str:
    """One ``slurm.extra`` item as its sbatch token (``--constraint=a100``); ConfigError otherwise."""
    if not isinstance(item, str):
        raise _refuse("extra", item, "must be a list of strings")
    if len(item) > MAX_SLURM_VALUE_CHARS:
        raise _refuse("extra", item[:40] + "…", f"has an item longer than {MAX_SLURM_VALUE_CHARS} characters")
    m = re.fullmatch(r"--([a-z][a-z-]*)(?:=(.*))?", item, flags=re.DOTALL)
    option = EXTRA_OPTIONS.get(m.group(1)) if m else None
    if option is None:
        raise _refuse("extra", item, "holds an sbatch option it does not allow" if m else "holds an item that is "
                      "not one --option=value token")
    value = m.group(2)
    if value is None:
        if option.pattern and not option.flag_too:
            raise _refuse("extra", item, f"needs a value for --{option.name} ({option.form})")
        return f"--{option.name}"
    if not option.pattern or not re.fullmatch(option.pattern, value):
        raise _refuse("extra", item, f"has a value --{option.name} does not take "
                      + (f"({option.form})" if option.pattern else "(it takes none)"))
    return f"--{option.name}={value}"


def slurm_tokens(key: str, value) -> list[str]:
    """The sbatch tokens one slurm option's value is written as (``["--partition=gpu"]``; none for
    ``conf`` and an empty value), after checking its type and form; ConfigError naming the option and
    the form it accepts otherwise. render_script calls it for every option it writes."""
    o = SLURM_OPTIONS.get(key)
    if o is None:
        raise ConfigError(f"Unknown slurm option {key!r}. Known: {', '.join(SLURM_OPTIONS)}.")
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, o.types):
        names = " or ".join("a list of strings" if t is list else "a whole number" if t is int else "text"
                            for t in o.types)
        raise _refuse(key, value, f"must be {names}")
    if key == "extra":
        return [_extra_token(item) for item in ([value] if isinstance(value, str) else value)]
    if isinstance(value, int):
        if value < o.minimum:
            raise _refuse(key, value, f"must be at least {o.minimum}")
        text = str(value)
    else:
        if not value.strip():
            raise _refuse(key, value, "must not be empty")
        if len(value) > MAX_SLURM_VALUE_CHARS:
            raise _refuse(key, value[:40] + "…", f"is longer than {MAX_SLURM_VALUE_CHARS} characters")
        if not re.fullmatch(o.pattern, value):
            raise _refuse(key, value)
        text = value
    return [f"{o.sbatch}={text}"] if o.sbatch else []


def check_slurm_options(opts) -> None:
    """ConfigError unless ``opts`` is a dict of known slurm options, each of its declared type and form."""
    if not isinstance(opts, dict):
        raise ConfigError(f"Training option slurm must be a dict of slurm options ({', '.join(SLURM_OPTIONS)}), "
                          f"not {opts!r}.")
    unknown = sorted(map(str, set(opts) - set(SLURM_OPTIONS)))
    if unknown:
        raise ConfigError(f"Unknown slurm option(s): {', '.join(unknown)}. Known: {', '.join(SLURM_OPTIONS)}.")
    for key, value in opts.items():
        slurm_tokens(key, value)


def check_slurm_rights(config, user=None, settings=None, cluster: str | None = None) -> None:
    """AccessError when a visitor of a shared server sets a restricted slurm option (``account``, ``extra``,
    ``conf``, or a ``cluster`` for the backend, which becomes ``conf``) that the operator has not allowed
    them (``CXR_SLURM_VISITOR_OPTIONS``). The operator (``user`` None or :func:`cxrcore.hosting.operator_user`,
    the CLI) and the app's user on their own machine may set every option; the values' forms are checked
    for everyone (:func:`check_slurm_options`)."""
    from .. import hosting

    s = settings or hosting.settings()
    if user is None or user.operator or not s.hosted:
        return
    opts = (config.get("slurm") if isinstance(config, dict) else None) or {}
    if not isinstance(opts, dict):
        return  # check_config refuses it
    wanted = [k for k in RESTRICTED_SLURM_OPTIONS if opts.get(k) not in (None, "", [])]
    if cluster and "conf" not in wanted:
        wanted.append("conf")
    refused = [k for k in wanted if k not in s.slurm_visitor_options]
    if refused:
        raise hosting.AccessError(
            f"On this shared server the slurm option(s) {', '.join(refused)} are the operator's to set "
            f"({'; '.join(f'{k}: {SLURM_OPTIONS[k].what}' for k in refused)}). Leave them out, or ask the operator "
            f"to allow them with {hosting.ENV_SLURM_VISITOR}={','.join(refused)}.")


def _check_placement(cfg) -> None:
    """gpus, share_gpus, nproc, nodes and the slurm options (types were checked by check_types)."""
    if cfg.gpus < 0:
        raise ConfigError(f"gpus must be 0 (CPU) or more, not {cfg.gpus}.")
    if cfg.nproc < 1:
        raise ConfigError(f"nproc (processes per node) must be at least 1, not {cfg.nproc}.")
    if cfg.nodes < 1:
        raise ConfigError(f"nodes must be at least 1, not {cfg.nodes}.")
    check_slurm_options(cfg.slurm)
    if str(cfg.device).startswith("cuda") and cfg.gpus == 0:
        raise ConfigError(f"device={cfg.device} needs a GPU: set gpus to 1 or more (gpus=0 runs on the CPU).")


def check_job_resources(config, user=None, settings=None) -> None:
    """AccessError when a visitor's job asks for more than the operator's ceilings on a job's resources: the
    :data:`cxrcore.hosting.CEILINGS` rows that name training options (processes ``nproc`` x ``nodes``:
    ``CXR_MAX_JOB_PROCS``; cache ``workers``: ``CXR_MAX_JOB_WORKERS``; ``batch_size``: ``CXR_MAX_JOB_BATCH``;
    ``image_size``: ``CXR_MAX_JOB_IMAGE_SIZE``), options left out counting at their defaults. The operator
    (``user`` None or :func:`cxrcore.hosting.operator_user`, the CLI) is not limited; nor is the app's user
    on their own machine with nothing set (:func:`cxrcore.hosting.limits`). Values of the wrong type are
    left to :func:`check_config`."""
    from .. import hosting
    from ..train.config import option  # no torch

    if not isinstance(config, dict):
        return  # check_config refuses it
    _check_resources(lambda name: config.get(name, option(name).default),
                     hosting.limits(settings or hosting.settings(), user))


def _check_resources(value_of, limits) -> None:
    """``limits.check`` for every ceiling on a job's resources; ``value_of(option name)`` gives the job's value."""
    import math

    from .. import hosting

    if not limits:
        return
    for c in hosting.CEILINGS:
        if not c.options or limits.get(c.name) is None:
            continue
        values = [value_of(name) for name in c.options]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            continue  # check_types refuses it
        what = " x ".join(c.options)
        shown = f" ({' x '.join(map(str, values))})" if len(values) > 1 else ""
        cap = limits.get(c.name)
        limits.check(c.name, math.prod(values), f"Training option {what}{shown}",
                     f"Set {what} to at most {cap}." if len(values) == 1 else f"Keep {what} at most {cap} in all.")

__all__ = ["EXTRA_OPTIONS", "RESTRICTED_SLURM_OPTIONS", "SLURM_OPTIONS", "ExtraOption", "SlurmOption", "check_config",
           "check_slurm_options", "check_slurm_rights", "slurm_tokens", "check_job_resources"]
