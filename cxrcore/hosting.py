"""What visitors of a shared server may do: the operator's settings and the checks that apply them.

The app is one process serving many browser sessions; this module holds no state but one registry, the
visitors' heavy computations running now (:func:`heavy_slot`, behind a lock). Every check is a
pure function of the operator's :class:`Settings` (read from environment variables each time they
are asked for) and the request's input, so pages, the job layer, the REST service and tests call
the same code.

Where the app listens decides the defaults. On a loopback address (127.0.0.1, ``localhost``, ``::1``)
with nothing configured it is one person's own machine and everything stays as it was: any folder,
any LLM base URL, every job action. On any other address (or with ``CXR_HOSTED=1``, for an app on
127.0.0.1 behind a reverse proxy) the defaults close: typed folders off, typed LLM base URLs off,
jobs launched by signed-in users only, two concurrent jobs per person, 20 explanation requests per hour
with the server's key per person.

Operator settings (environment variables):

``CXR_DATA_ROOTS``             folders visitors may open, separated by ``:`` (os.pathsep); typed paths
                               are resolved (symlinks, ``..``) and must lie inside one of them
``CXR_LLM_ALLOWED_BASE_URLS``  OpenAI-compatible base URLs a visitor may type (comma separated); a
                               typed URL is used only with the visitor's own key
``CXR_JOB_LAUNCHERS``          who may launch jobs: ``everyone``, ``signed-in``, ``nobody`` or a comma
                               list of e-mail addresses / user names
``CXR_JOB_ADMINS``             comma list of users who may cancel and resume anyone's jobs
``CXR_MAX_JOBS_PER_USER``      queued + running jobs per person (``0``: no cap)
``CXR_MAX_UPLOAD_MB``          largest image a visitor may upload (app and REST service)
``CXR_LLM_REQUESTS_PER_HOUR``  explanation requests per hour with the server's own key, per signed-in
                               visitor, the others sharing one count (``0``: no limit; default 20 on
                               a shared server, no limit on one's own machine; see explain/budget.py)
``CXR_HOSTED``                 ``1``: apply the shared-server defaults even on a loopback address
``CXR_AUTH_TRUST_EMAIL``       ``1``: the identity provider's e-mail addresses are the person's own even
                               without an ``email_verified`` claim (see :func:`visitor`)
``CXR_SLURM_VISITOR_OPTIONS``  the operator's slurm options a visitor of a shared server may set too, comma
                               separated: ``account``, ``extra``, ``conf`` (default none; the CLI always may;
                               every value's form is checked for everyone, see jobs/config.py)

A request that arrives from another machine is treated as a shared server's whatever the settings
say (:func:`for_request`): a reverse proxy's forwarding headers, a peer that is not this machine, or
a ``Host`` that is not a loopback name. So an app left on 127.0.0.1 behind a proxy without
``CXR_HOSTED=1`` still applies the shared-server defaults to its visitors (and Home says so).

Ceilings on the work one request may ask for (:data:`CEILINGS`, one row each: ``CXR_MAX_BOOTSTRAP``,
``CXR_MAX_TTA_VIEWS``, ``CXR_MAX_EVAL_IMAGES``, ``CXR_MAX_SLOW_CAM_IMAGES``, ``CXR_MAX_FAITHFULNESS_PER_LABEL``,
``CXR_MAX_JOB_PROCS``, ``CXR_MAX_JOB_WORKERS``, ``CXR_MAX_JOB_BATCH``, ``CXR_MAX_JOB_IMAGE_SIZE``): the
operator's value (``0``: none), else the row's default on a shared server, else none. :func:`limits` gives
the ones that hold for a visitor; the functions that do the work (evaluation, localization, the job layer)
take them and refuse with AccessError naming the setting, and the pages take their widgets' maxima from them.

The CLI and Python callers are the operator's own tools (:func:`operator_user`): job rights do not
restrict them; the data roots do, in the job layer, whenever ``CXR_DATA_ROOTS`` is set.
"""
from __future__ import annotations

import getpass
import ipaddress
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping
from urllib.parse import urlsplit

from .errors import AccessError
from .explain.llm import OPENAI_BASE_URL, LLMConfig, normalize_base_url  # the transport's URL form, below the policy

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
DEFAULT_MAX_UPLOAD_MB = 32.0      # a chest radiograph, even an uncompressed 16-bit DICOM, is far below
DEFAULT_HOSTED_JOBS_PER_USER = 2
DEFAULT_HOSTED_LLM_PER_HOUR = 20  # explanation requests with the server's key, per signed-in visitor (see explain/budget.py)
ACTIONS = ("launch", "cancel", "resume")
LAUNCHER_MODES = ("everyone", "signed-in", "nobody")
ANONYMOUS = "anonymous"
OIDC_PREFIX = "oidc:"  # a signed-in visitor without a verified e-mail: oidc:<issuer>|<subject>

ENV_ADDRESS = "CXR_ADDRESS"
ENV_HOSTED = "CXR_HOSTED"
ENV_ROOTS = "CXR_DATA_ROOTS"
ENV_LLM_ALLOWED = "CXR_LLM_ALLOWED_BASE_URLS"
ENV_LAUNCHERS = "CXR_JOB_LAUNCHERS"
ENV_ADMINS = "CXR_JOB_ADMINS"
ENV_MAX_JOBS = "CXR_MAX_JOBS_PER_USER"
ENV_LLM_PER_HOUR = "CXR_LLM_REQUESTS_PER_HOUR"
ENV_MAX_UPLOAD = "CXR_MAX_UPLOAD_MB"
ENV_TRUST_EMAIL = "CXR_AUTH_TRUST_EMAIL"
ENV_SLURM_VISITOR = "CXR_SLURM_VISITOR_OPTIONS"
# The slurm options that are the operator's (their account, their slurm.conf, extra sbatch options): a
# visitor of a shared server sets them only where CXR_SLURM_VISITOR_OPTIONS allows. Their forms are
# declared in cxrcore.jobs.config (SLURM_OPTIONS), which reads this list.
RESTRICTED_SLURM_OPTIONS = ("account", "extra", "conf")


# --------------------------------------------------------------------------- settings

def is_loopback(address: str | None) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost).

    An empty address is *not* loopback: Streamlit (and most servers) then listen on every interface.
    A Unix socket (``unix://…``) is not either: something in front of it (a proxy) serves visitors."""
    if not address:
        return False
    a = address.strip().strip("[]").lower()
    if a in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(a).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    """The operator's settings as one value (see the module docstring). ``address``: where the app
    listens, or None for the CLI / a Python caller on this machine (treated as loopback)."""

    address: str | None = None
    hosted_flag: bool = False
    data_roots: tuple[Path, ...] = ()
    llm_allowed: tuple[str, ...] = ()
    llm_allowed_set: bool = False
    launchers: str | None = None            # None: not configured
    admins: tuple[str, ...] = ()
    max_jobs_per_user: int | None = None    # None: not configured
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    llm_per_hour: int | None = None         # None: not configured
    trust_email: bool = False               # CXR_AUTH_TRUST_EMAIL: the provider's e-mails need no email_verified
    slurm_visitor_options: tuple[str, ...] = ()  # CXR_SLURM_VISITOR_OPTIONS: restricted slurm options visitors may set
    reached_remotely: bool = False          # this request came from another machine (a proxy's headers)
    ceilings: tuple[tuple[str, int], ...] = ()  # CEILINGS the operator set: (name, value; 0 = none)
    problems: tuple[str, ...] = field(default=())  # settings that could not be read (shown to the operator)

    @property
    def hosted(self) -> bool:
        """A shared server: an address other visitors can reach, or CXR_HOSTED=1."""
        return (self.hosted_flag or self.reached_remotely
                or (self.address is not None and not is_loopback(self.address)))

    @property
    def roots_configured(self) -> bool:
        return bool(self.data_roots)

    @property
    def typed_folders_allowed(self) -> bool:
        """Whether a page offers a typed folder at all (any folder locally, inside the roots when set)."""
        return self.roots_configured or not self.hosted

    @property
    def effective_launchers(self) -> str:
        if self.launchers is not None:
            return self.launchers
        return "signed-in" if self.hosted else "everyone"

    @property
    def llm_hour_cap(self) -> int:
        """Explanation requests per hour with the server's own key, per signed-in visitor (the others share
        one count); 0 means no limit."""
        if self.llm_per_hour is not None:
            return self.llm_per_hour
        return DEFAULT_HOSTED_LLM_PER_HOUR if self.hosted else 0

    @property
    def job_cap(self) -> int:
        """Queued + running jobs per person; 0 means no cap."""
        if self.max_jobs_per_user is not None:
            return self.max_jobs_per_user
        return DEFAULT_HOSTED_JOBS_PER_USER if self.hosted else 0

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def single_user(self) -> bool:
        """The user's own machine with no job rights configured: every job action is allowed."""
        return not self.hosted and self.launchers is None and not self.admins


def _split(text: str | None, seps: str = ",") -> list[str]:
    out = [text or ""]
    for sep in seps:
        out = [piece for part in out for piece in part.split(sep)]
    return [p.strip() for p in out if p.strip()]


def _whole_number(env: Mapping[str, str], name: str, fallback: int, problems: list[str]) -> int | None:
    """A count setting: None when unset, negatives as 0, ``fallback`` (and a problem noted) when unreadable."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        return max(0, int(raw))
    except ValueError:
        problems.append(f"{name}: {env[name]!r} is not a whole number (using {fallback})")
        return fallback


def _flag(env: Mapping[str, str], name: str) -> bool:
    return (env.get(name) or "").strip().lower() in ("1", "true", "yes")


def _slurm_visitor_options(env: Mapping[str, str], problems: list[str]) -> tuple[str, ...]:
    """CXR_SLURM_VISITOR_OPTIONS: names of restricted slurm options (cxrcore.jobs.config); others noted, ignored."""
    names = [n.lower() for n in _split(env.get(ENV_SLURM_VISITOR), ", ")]
    if not names:
        return ()
    for n in names:
        if n not in RESTRICTED_SLURM_OPTIONS:
            problems.append(f"{ENV_SLURM_VISITOR}: {n!r} is not one of {', '.join(RESTRICTED_SLURM_OPTIONS)} (ignored)")
    return tuple(dict.fromkeys(n for n in names if n in RESTRICTED_SLURM_OPTIONS))


def settings(address: str | None = ..., environ: Mapping[str, str] | None = None) -> Settings:
    """The operator's settings, read now. ``address``: where the app listens (inside Streamlit the
    caller passes ``server.address``); omitted: ``CXR_ADDRESS`` when set, else None (this machine)."""
    env = os.environ if environ is None else environ
    if address is ...:
        address = env.get(ENV_ADDRESS) or None
    problems: list[str] = []
    roots: list[Path] = []
    for raw in _split(env.get(ENV_ROOTS), os.pathsep + ","):
        p = Path(raw).expanduser()
        if not p.is_absolute():
            problems.append(f"{ENV_ROOTS}: {raw!r} is not an absolute path (ignored)")
            continue
        roots.append(p.resolve())
    allowed: list[str] = []
    for raw in _split(env.get(ENV_LLM_ALLOWED), ", \n"):
        try:
            allowed.append(normalize_base_url(raw))
        except AccessError as exc:
            problems.append(f"{ENV_LLM_ALLOWED}: {exc} (ignored)")
    launchers = env.get(ENV_LAUNCHERS)
    launchers = launchers.strip() if launchers and launchers.strip() else None
    if launchers is not None and launchers.lower() in LAUNCHER_MODES:
        launchers = launchers.lower()
    cap = _whole_number(env, ENV_MAX_JOBS, DEFAULT_HOSTED_JOBS_PER_USER, problems)
    llm_cap = _whole_number(env, ENV_LLM_PER_HOUR, DEFAULT_HOSTED_LLM_PER_HOUR, problems)
    upload = DEFAULT_MAX_UPLOAD_MB
    if (env.get(ENV_MAX_UPLOAD) or "").strip():
        try:
            upload = float(env[ENV_MAX_UPLOAD])
            if not upload > 0:
                raise ValueError
        except ValueError:
            problems.append(f"{ENV_MAX_UPLOAD}: {env[ENV_MAX_UPLOAD]!r} is not a positive number of MB "
                            f"(using {DEFAULT_MAX_UPLOAD_MB:g})")
            upload = DEFAULT_MAX_UPLOAD_MB
    return Settings(address=address, hosted_flag=_flag(env, ENV_HOSTED),
                    data_roots=tuple(roots), llm_allowed=tuple(dict.fromkeys(allowed)),
                    llm_allowed_set=bool(_split(env.get(ENV_LLM_ALLOWED), ", \n")), launchers=launchers,
                    admins=tuple(a.lower() for a in _split(env.get(ENV_ADMINS))), max_jobs_per_user=cap,
                    max_upload_mb=upload, llm_per_hour=llm_cap,
                    trust_email=_flag(env, ENV_TRUST_EMAIL), ceilings=_read_ceilings(env, problems),
                    slurm_visitor_options=_slurm_visitor_options(env, problems),
                    problems=tuple(problems))


FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip", "x-forwarded-proto",
                      "x-original-forwarded-for", "cf-connecting-ip", "true-client-ip", "via")


def reached_remotely(headers: Mapping[str, str] | None, peer: str | None = None) -> bool:
    """Whether a request came from another machine: a proxy's forwarding header (``Forwarded``,
    ``X-Forwarded-For``, ``X-Real-IP``, ``Via``, ...), a peer address that is not loopback, or a ``Host``
    header that names something other than this machine's loopback. No headers and no peer (a test
    harness, the CLI) is not remote."""
    h = {str(k).lower(): str(v) for k, v in dict(headers or {}).items()}
    if any(h.get(name, "").strip() for name in FORWARDING_HEADERS):
        return True
    if isinstance(peer, str) and peer and not is_loopback(peer):
        return True
    host = h.get("host", "").strip()
    if host:
        try:
            name = urlsplit(f"//{host}").hostname or ""
        except ValueError:
            return True
        if name and not is_loopback(name):
            return True
    return False


def for_request(s: Settings, headers: Mapping[str, str] | None, peer: str | None = None) -> Settings:
    """``s`` for one request: with the shared-server defaults on when it came from another machine."""
    if s.hosted or not reached_remotely(headers, peer):
        return s
    from dataclasses import replace

    return replace(s, reached_remotely=True)


# --------------------------------------------------------------------------- data roots

HOW_TO_ENABLE_FOLDERS = (f"Typed folders are off on this shared server. The operator can name the folders visitors "
                         f"may open with {ENV_ROOTS}=/data/nih:/data/chexpert (see the README's "
                         "\"Deploying for a team\").")


def resolve_data_path(typed: str, s: Settings) -> Path:
    """A folder a visitor typed, resolved (``~``, ``..``, symlinks) and checked against the data roots.

    On this machine with no roots configured: any folder (relative paths start at the working
    directory). With roots: the resolved path must lie inside one of them (relative paths start at
    the first root). On a shared server without roots: refused. Raises AccessError."""
    text = (typed or "").strip()
    if not text:
        raise AccessError("Type the path of a dataset folder.")
    if "\0" in text:
        raise AccessError("A folder path cannot contain a NUL character.")
    if not s.typed_folders_allowed:
        raise AccessError(HOW_TO_ENABLE_FOLDERS)
    path = Path(text).expanduser()
    if not path.is_absolute() and s.roots_configured:
        path = s.data_roots[0] / path
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise AccessError(f"The folder {text} cannot be resolved ({exc}).") from None
    if s.roots_configured:
        check_inside(resolved, s.data_roots, text)
    return resolved


def check_inside(resolved: Path, roots: tuple[Path, ...], typed: str | None = None) -> Path:
    """``resolved`` if it lies in one of ``roots`` (both already resolved), else AccessError."""
    if any(resolved == r or resolved.is_relative_to(r) for r in roots):
        return resolved
    shown = typed if typed is not None else str(resolved)
    where = f" (it resolves to {resolved})" if typed is not None and str(resolved) != typed else ""
    raise AccessError(f"The folder {shown}{where} is outside the folders this server opens "
                      f"({', '.join(map(str, roots))}). Choose a folder inside them, or ask the operator to add "
                      f"it to {ENV_ROOTS}.")


def job_roots(s: Settings) -> tuple[Path, ...] | None:
    """Where a job's ``data`` and ``init`` may lie, or None for anywhere: the data roots, the workspace
    (built-in phantoms, runs, saved checkpoints) and the shipped checkpoints. Enforced when roots are
    configured or on a shared server."""
    if not (s.roots_configured or s.hosted):
        return None
    from . import workspace

    # Each workspace folder resolved on its own: an operator may link datasets/ elsewhere.
    ws = [workspace.root()] + [workspace.sub(n) for n in ("datasets", "runs", "checkpoints", "library")]
    return tuple(dict.fromkeys([*s.data_roots, *(p.resolve() for p in ws), workspace.shipped_checkpoints().resolve()]))


def check_job_paths(config: dict, s: Settings) -> None:
    """AccessError when a job config's ``data`` or ``init`` folder (training), or its ``input`` or ``checkpoint``
    (scoring), lies outside :func:`job_roots` (symlinks and ``..`` resolved). Library models (``xrv:…``) are
    names, not paths; a DICOMweb query (``input``) is a URL, checked against the operator's PACS by the job layer."""
    roots = job_roots(s)
    if roots is None or not isinstance(config, dict):
        return
    for key in ("data", "init", "input", "checkpoint"):
        value = config.get(key)
        if not value or not isinstance(value, str) or (key == "input" and value.startswith(("http://", "https://"))):
            continue
        if key in ("init", "checkpoint"):
            from .models.library import library_ref

            if library_ref(value):
                continue
        try:
            resolved = Path(value).expanduser().resolve()
        except (OSError, RuntimeError, ValueError) as exc:
            raise AccessError(f"The {key} folder {value} cannot be resolved ({exc}).") from None
        check_inside(resolved, roots, value)


def check_model_ref(ref, s: Settings, arch: bool = False) -> None:
    """AccessError when a visitor names a model this server must not fetch or read for them.

    ``ref``: a checkpoint as the model loaders take it (a folder, a library name such as
    ``xrv:densenet121-res224-all`` or ``clip:ViT-B-32/openai``); ``arch=True``: a training architecture
    name (timm / ``tv:`` / ``xrv:`` / ``clip:``). Pages, the job layer for an app visitor's job and the
    Training form call it before any loader sees the name; the CLI (the operator) does not.

    On a shared server (``s.hosted``) a visitor may name only: the library models the pickers list
    (torchxrayvision's ``xrv:`` names; the CLIP names of :data:`cxrcore.models.clip_names.LISTED` and
    ``CXR_CLIP_MODELS``, or such a name's architecture alone), a timm or torchvision architecture
    (their libraries' own registries: no path, no repository), and folders inside :func:`job_roots`
    (the workspace's runs and saved copies, the shipped checkpoints, ``CXR_DATA_ROOTS``), a
    ``clip:local-dir:<folder>`` too. Refused: ``clip:hf-hub:<repo>`` of a repository not listed (it
    would download any repository onto the server's disk), any other unlisted ``clip:`` model (its
    weights), a folder outside. With ``CXR_DATA_ROOTS`` set on one's own machine, folders are held to
    :func:`job_roots` as typed data folders are; with nothing configured everything is allowed.
    Nothing is read, resolved beyond the path or downloaded here."""
    text = str(ref).strip() if ref is not None else ""
    if not text:
        return
    roots = job_roots(s)
    if roots is None:
        return  # one's own machine with no roots: any folder, any model

    def refuse(why: str) -> AccessError:
        return AccessError(f"The model {text!r} is not available to visitors of this server: {why}")

    def inside(folder: str, what: str) -> None:
        try:
            resolved = Path(folder).expanduser().resolve()
        except (OSError, RuntimeError, ValueError) as exc:
            raise refuse(f"its folder {folder} cannot be resolved ({exc}).") from None
        if not any(resolved == r or resolved.is_relative_to(r) for r in roots):
            raise refuse(f"{what} {folder} lies outside the folders this server opens "
                         f"({', '.join(map(str, roots))}). Choose a model from the lists, or ask the operator.")

    from .models import clip_names
    from .models.clip_names import PREFIX as CLIP

    def operator_listed(name: str) -> bool:  # in CXR_CLIP_MODELS: a name (or folder) the operator chose
        if not clip_names.extra_names_set():
            return False
        from .models.library import library_names

        return name.lower() in {n.lower() for n in library_names()}

    lower = text.lower()
    if lower.startswith(CLIP):
        body = text[len(CLIP):].strip()
        if body.lower().startswith("local-dir:"):
            folder = body[len("local-dir:"):].strip()
            if folder and not operator_listed(f"{CLIP}local-dir:{Path(folder).expanduser().resolve()}"):
                inside(folder, "clip:local-dir: reads files on the server's disk, and the folder")
            return
        if not s.hosted:
            return
        from .models.library import library_names

        listed = [n for n in library_names() if n.lower().startswith(CLIP)]
        if body.lower().startswith("hf-hub:"):
            key = f"{CLIP}hf-hub:{body[len('hf-hub:'):].strip()}".lower()
            ok = key in {n.lower() for n in listed}
            why = "clip:hf-hub:<repository> would download that repository onto the server"
        else:
            model, _, tag = body.partition("/")
            key = f"{CLIP}{model.strip()}" + (f"/{tag.strip()}" if tag.strip() else "")
            plain = [n for n in listed if not n[len(CLIP):].lower().startswith(("hf-hub:", "local-dir:"))]
            ok = key.lower() in {n.lower() for n in plain} | {n.split("/")[0].lower() for n in plain}
            why = "only the CLIP models it lists are fetched for visitors"
        if not ok:
            raise refuse(f"{why}. Listed: {', '.join(listed) or 'none'}. The operator can list more with "
                         "CXR_CLIP_MODELS (comma separated).")
        return
    if lower.startswith("xrv:") or arch:
        return  # a fixed list of library names / an architecture name the library's registry must know
    path = Path(text).expanduser()
    if not path.exists() and path.name.lower().startswith("xrv:"):
        return  # a library name made into a path by a caller (see models.library.library_ref)
    inside(text, "the checkpoint folder")


# --------------------------------------------------------------------------- LLM endpoints

def llm_base_url_editable(s: Settings) -> bool:
    """Whether a visitor may type a base URL at all: locally with nothing configured, or when the
    operator allows some."""
    return bool(s.llm_allowed) or (not s.hosted and not s.llm_allowed_set)


def llm_config_for(visitor_base_url: str | None, visitor_key: str | None, s: Settings, model: str | None = None,
                   environ: Mapping[str, str] | None = None):
    """The LLM endpoint and key for one request.

    A blank base URL, or the environment's own (``OPENAI_BASE_URL``, or OpenAI's when unset), uses
    the environment's endpoint with the visitor's key or, when blank, ``OPENAI_API_KEY``. Any other
    base URL must be on the operator's allowlist (on this machine with nothing configured, any URL is
    allowed) and is used only with the key the visitor typed: the environment's key never goes there.
    Raises AccessError."""
    env = LLMConfig.from_env(environ=environ)
    overrides = {"model": model} if model else {}
    typed = (visitor_base_url or "").strip()
    key = (visitor_key or "").strip() or None
    try:
        own = normalize_base_url(env.base_url) if env.base_url else OPENAI_BASE_URL
    except AccessError:
        own = env.base_url
    if not typed or normalize_base_url(typed) == own:
        return LLMConfig.from_env(environ=environ, api_key=key, **overrides)
    wanted = normalize_base_url(typed)
    if s.llm_allowed_set or s.hosted:
        if wanted not in s.llm_allowed:
            allowed = ", ".join(s.llm_allowed) or "none"
            raise AccessError(f"The base URL {wanted} is not one this server may send requests to (allowed: "
                              f"{allowed}). Leave the field blank for the server's own endpoint, or ask the "
                              f"operator to add it to {ENV_LLM_ALLOWED}.")
    if not key:
        raise AccessError(f"A base URL other than the server's own ({wanted}) needs your own API key: the server's "
                          "key is only ever sent to the server's own endpoint.")
    return LLMConfig(api_key=key, base_url=wanted, model=model or env.model, isolated=True)


# --------------------------------------------------------------------------- who may do what

@dataclass(frozen=True)
class User:
    """Who is asking. ``id`` is what a job records as its owner: a signed-in user's e-mail (or name),
    the OS user locally and for the CLI, ``anonymous#<session token>`` for a visitor who has not signed in."""

    id: str
    name: str = ""
    signed_in: bool = False
    operator: bool = False

    @property
    def anonymous(self) -> bool:
        return is_anonymous(self.id)

    @property
    def display(self) -> str:
        return owner_display(self.id)


def is_anonymous(owner: str | None) -> bool:
    return bool(owner) and (owner == ANONYMOUS or owner.startswith(ANONYMOUS + "#"))


def owner_display(owner: str | None) -> str:
    """An owner as the job list shows it (an anonymous session's token is not shown)."""
    if not owner:
        return "–"
    return ANONYMOUS if is_anonymous(owner) else owner


def operator_user() -> User:
    """The CLI / a Python caller on this machine: the OS user, with every job right."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "operator"
    return User(id=name, name=name, operator=True)


def _claim_true(value) -> bool:
    """An OpenID Connect boolean claim: JSON true (some providers send the string "true")."""
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def visitor(user_info: Mapping | None, session_token: str, s: Settings) -> User:
    """The app's visitor from Streamlit's ``st.user`` (signed in when ``is_logged_in`` is true) and a
    random token kept in the session. Not signed in: the OS user on this machine (the app is theirs),
    ``anonymous#<token>`` on a shared server.

    A signed-in visitor is known by their e-mail address only when the identity provider says it
    verified it (``email_verified`` true), or when the operator says every address it issues is the
    person's own (``CXR_AUTH_TRUST_EMAIL=1``, e.g. a company directory that sends no such claim).
    Otherwise they are ``oidc:<issuer>|<sub>``: the provider's own subject identifier, which nobody can
    choose, so an address or a user name claimed at an open sign-up never matches an admin, a listed
    launcher or another person's jobs."""
    info = dict(user_info or {})
    if info.get("is_logged_in") is True:
        email = str(info.get("email") or "").strip()
        shown = str(info.get("name") or info.get("preferred_username") or email or "")
        if email and (_claim_true(info.get("email_verified")) or s.trust_email):
            return User(id=email.lower(), name=shown or email, signed_in=True)
        sub = str(info.get("sub") or "").strip()
        if sub:
            iss = str(info.get("iss") or "").strip()
            ident = f"{OIDC_PREFIX}{iss}|{sub}" if iss else f"{OIDC_PREFIX}{sub}"
            return User(id=ident, name=(f"{shown} (unverified)" if shown else "unverified user"), signed_in=True)
        # signed in, but nothing that tells this person apart for certain: treated as not signed in
    if not s.hosted:
        local = operator_user()
        return User(id=local.id, name=local.name)
    return User(id=f"{ANONYMOUS}#{session_token}", name=ANONYMOUS)


def same_person(owner: str | None, user: User) -> bool:
    """Whether a job row's owner is this user; anonymous visitors count as one person for the cap."""
    if user.anonymous:
        return is_anonymous(owner)
    return bool(owner) and owner.lower() == user.id.lower()


def _may_launch(user: User, s: Settings) -> str | None:
    mode = s.effective_launchers
    if mode == "everyone":
        return None
    if mode == "nobody":
        return "Launching jobs from the app is off on this server (CXR_JOB_LAUNCHERS=nobody)."
    if mode == "signed-in":
        if user.signed_in:
            return None
        return ("Sign in to launch jobs on this server." if s.hosted else
                "Launching jobs needs a signed-in user (CXR_JOB_LAUNCHERS=signed-in).")
    allowed = {a.lower() for a in _split(mode)}
    if user.signed_in and user.id.lower() in allowed:
        return None
    return ("Only the users the operator named in CXR_JOB_LAUNCHERS may launch jobs on this server"
            + ("" if user.signed_in else "; sign in first") + ".")


def why_not(user: User, action: str, job=None, s: Settings | None = None) -> str | None:
    """None when ``user`` may do ``action`` (``launch``, ``cancel``, ``resume``) on ``job``; otherwise
    the reason, in words for the page. The operator (CLI) may do everything; on one person's own
    machine with nothing configured, so may the app's user. Otherwise: launching follows
    ``CXR_JOB_LAUNCHERS``; a job is cancelled by whoever launched it or an admin (``CXR_JOB_ADMINS``)
    and resumed by its launcher while they may still launch, or an admin."""
    if action not in ACTIONS:
        raise ValueError(f"unknown job action {action!r}")
    s = s or settings()
    if user.operator or s.single_user:
        return None
    admin = user.signed_in and user.id.lower() in s.admins
    if action == "launch":
        return None if admin else _may_launch(user, s)
    if job is None:
        raise ValueError(f"{action} needs a job")
    if admin:
        return None
    owner = getattr(job, "owner", None)
    mine = bool(owner) and owner.lower() == user.id.lower()
    if not mine:
        return (f"Job {job.id} was launched by {owner_display(owner)}; only they or an admin (CXR_JOB_ADMINS) may "
                f"{action} it.")
    if action == "resume":
        return _may_launch(user, s)
    return None


def is_admin(user: User, s: Settings | None = None) -> bool:
    """Whether ``user`` acts for the operator: the operator's own tools (the CLI), one person's own machine with
    nothing configured, or a signed-in admin (``CXR_JOB_ADMINS``). What touches the whole site (scoring new PACS
    studies into the hospital's archive) is theirs only."""
    s = s or settings()
    return user.operator or s.single_user or (user.signed_in and user.id.lower() in s.admins)


def may(user: User, action: str, job=None, s: Settings | None = None) -> bool:
    return why_not(user, action, job, s) is None


def check_may(user: User, action: str, job=None, s: Settings | None = None) -> None:
    reason = why_not(user, action, job, s)
    if reason is not None:
        raise AccessError(reason)


def why_not_save(user: User, owner: str | None, s: Settings | None = None) -> str | None:
    """None when ``user`` may change, in place, a card every visitor sees (thresholds, temperatures):
    a run launched by ``owner`` (a job's recorded owner), or, with ``owner`` None, something nobody
    owns (the workspace's shared copy of a shipped or library model, a run from before owners were
    recorded). Otherwise the reason, in words; the caller then saves into the user's own copy
    (:func:`cxrcore.eval.thresholds.save_target`). The operator (CLI) and one person's own machine with
    nothing configured may; otherwise the owner (the same id: an anonymous visitor only from the browser
    session that launched it) or an admin (``CXR_JOB_ADMINS``)."""
    s = s or settings()
    if user.operator or s.single_user or (user.signed_in and user.id.lower() in s.admins):
        return None
    if owner and owner.lower() == user.id.lower():
        return None
    if owner:
        return (f"You are not this run's owner (it was launched by {owner_display(owner)}); only they or an admin "
                "(CXR_JOB_ADMINS) change what every visitor sees")
    return "Only an admin (CXR_JOB_ADMINS) changes what every visitor of this server sees"


def cap_for(user: User, s: Settings) -> int:
    """How many queued + running jobs this user may have at once (0: no cap)."""
    return 0 if user.operator else s.job_cap


# --------------------------------------------------------------------------- uploads

def check_upload_size(n_bytes: int, s: Settings, what: str = "The upload") -> None:
    if n_bytes > s.max_upload_bytes:
        raise AccessError(f"{what} is {n_bytes / 2**20:.1f} MB; this server accepts images up to "
                          f"{s.max_upload_mb:g} MB ({ENV_MAX_UPLOAD}).")


def api_max_body_bytes(s: Settings) -> int:
    """The REST service's request limit for images up to the upload limit: base64 (4/3) plus 64 KiB of JSON."""
    return (s.max_upload_bytes + 2) // 3 * 4 + 65536


# --------------------------------------------------------------------------- ceilings on work

@dataclass(frozen=True)
class Ceiling:
    """One ceiling on the work a visitor may ask for. ``hosted``: its value on a shared server when the
    operator sets nothing (on one's own machine with nothing set there is none); ``options``: the training
    options it bounds (their product), for the job layer's check and the Training form's maxima."""

    name: str
    env: str
    hosted: int
    unit: str
    bounds: str
    options: tuple[str, ...] = ()


CEILINGS: tuple[Ceiling, ...] = (
    Ceiling("bootstrap", "CXR_MAX_BOOTSTRAP", 1000, "replicates",
            "patient-bootstrap replicates of one evaluation (Evaluation page)"),
    Ceiling("tta_views", "CXR_MAX_TTA_VIEWS", 2, "views per image",
            "test-time augmentation views per image of an evaluation: none 1, flip 2, ten-crop 10 (so 2 offers "
            "none and flip, not ten-crop)"),
    Ceiling("eval_images", "CXR_MAX_EVAL_IMAGES", 2000, "images",
            "images one model predicts for an evaluation (each split it predicts), a localization run or the "
            "Thresholds page"),
    Ceiling("slow_cam_images", "CXR_MAX_SLOW_CAM_IMAGES", 20, "images",
            "images a perturbation CAM method (ScoreCAM: one forward pass per activation channel) maps in one "
            "localization run; the gradient methods are bounded by the image ceiling only"),
    Ceiling("faithfulness", "CXR_MAX_FAITHFULNESS_PER_LABEL", 5, "images per label",
            "images per label and CAM method scored for faithfulness (ROAD, deletion / insertion: about 60 "
            "forward passes each) in one localization run"),
    Ceiling("job_procs", "CXR_MAX_JOB_PROCS", 4, "processes",
            "processes of one training job a visitor launches (nproc x nodes)", ("nproc", "nodes")),
    Ceiling("job_workers", "CXR_MAX_JOB_WORKERS", 4, "workers",
            "cache-building worker processes of one training job a visitor launches", ("workers",)),
    Ceiling("job_batch", "CXR_MAX_JOB_BATCH", 256, "images per batch",
            "batch size of one training job a visitor launches", ("batch_size",)),
    Ceiling("job_image_size", "CXR_MAX_JOB_IMAGE_SIZE", 512, "px",
            "training image size of one job a visitor launches", ("image_size",)),
)
CEILING_BY_NAME = {c.name: c for c in CEILINGS}


def _read_ceilings(env: Mapping[str, str], problems: list[str]) -> tuple[tuple[str, int], ...]:
    """The ceilings the operator set, as (name, value); 0 means none, an unreadable value the shared-server default."""
    out = []
    for c in CEILINGS:
        value = _whole_number(env, c.env, c.hosted, problems)
        if value is not None:
            out.append((c.name, value))
    return tuple(out)


def ceiling(s: Settings, name: str) -> int | None:
    """The ceiling ``name`` (a :data:`CEILINGS` row) under ``s``, None for none: the operator's value
    (0: none), else the row's default on a shared server, else none (one's own machine)."""
    c = CEILING_BY_NAME[name]
    value = dict(s.ceilings).get(name)
    if value is None:
        return c.hosted if s.hosted else None
    return value or None


@dataclass(frozen=True)
class Limits:
    """The ceilings that hold for one request, as (name, value) pairs; ``Limits()`` has none (the
    operator's own tools, one person's own machine with nothing set). Made by :func:`limits`; passed to
    the functions that do the work, which call :meth:`check` before doing it."""

    values: tuple[tuple[str, int], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.values)

    def get(self, name: str) -> int | None:
        CEILING_BY_NAME[name]  # KeyError for a name that is not declared
        return dict(self.values).get(name)

    def widget_max(self, name: str, fallback):
        """A widget's maximum: ``fallback`` (the widget's own), lowered to the ceiling when there is one."""
        cap = self.get(name)
        if cap is None or (fallback is not None and fallback <= cap):
            return fallback
        return type(fallback)(cap) if fallback is not None else cap

    def allows(self, name: str, value: float) -> bool:
        cap = self.get(name)
        return cap is None or value <= cap

    def note(self, name: str) -> str:
        """A widget's help line about the ceiling ("" when there is none)."""
        cap = self.get(name)
        return "" if cap is None else f"This server allows at most {cap} {CEILING_BY_NAME[name].unit} ({CEILING_BY_NAME[name].env})."

    def check(self, name: str, value: float, what: str, fix: str = "") -> None:
        """AccessError when ``value`` is over the ceiling ``name``; the message names the setting and the ceiling."""
        if self.allows(name, value):
            return
        c = CEILING_BY_NAME[name]
        cap = self.get(name)
        raise AccessError(f"{what}: {value:g} is over this server's ceiling of {cap:g} {c.unit} ({c.env}={cap}). "
                          + (f"{fix} " if fix else "")
                          + f"The operator can raise {c.env} (see the README's \"Deploying for a team\").")


def limits(s: Settings, user: User | None = None) -> Limits:
    """The ceilings on the work ``user`` may ask for under ``s``. ``user=None`` or an operator (the CLI, a
    Python caller on this machine): none, as for job rights."""
    if user is None or user.operator:
        return Limits()
    return Limits(tuple((c.name, v) for c in CEILINGS if (v := ceiling(s, c.name)) is not None))


# The one piece of shared state of this module: which visitors have a heavy computation running in this
# process now. A plain set behind a threading.Lock (the app is one process, sessions are threads); it is
# the intended per-process registry, not per-request state, and nothing else reads or changes it.
_heavy_lock = threading.Lock()
_heavy_running: set[str] = set()
HEAVY_BUSY = "You already have a computation running; wait for it to finish, then try again."
HEAVY_BUSY_ANONYMOUS = ("Visitors who are not signed in share one computation at a time on this server, and one is "
                        "running; wait for it to finish, or sign in to get your own.")


@contextmanager
def heavy_slot(user: User | str, s: Settings) -> Iterator[None]:
    """Hold this visitor's one heavy computation (evaluation, localization, faithfulness, predicting a split)
    for the ``with`` block; AccessError at once, nothing queued, when they already have one running.

    Only on a shared server (``s.hosted``); on one's own machine, and for the operator, it holds nothing.
    Keyed by the visitor's id; every visitor who is not signed in shares one key (``anonymous``): a new
    browser session would otherwise be a new visitor (as for the job cap and the LLM budget). The registry
    is this process's (the module-level set above, behind a ``threading.Lock``); the slot is given back
    however the block ends (an error, Streamlit stopping the script for a rerun)."""
    uid = user.id if isinstance(user, User) else str(user)
    if not s.hosted or (isinstance(user, User) and user.operator):
        yield
        return
    key = ANONYMOUS if is_anonymous(uid) else uid.lower()
    with _heavy_lock:
        if key in _heavy_running:
            raise AccessError(HEAVY_BUSY_ANONYMOUS if key == ANONYMOUS else HEAVY_BUSY)
        _heavy_running.add(key)
    try:
        yield
    finally:
        with _heavy_lock:
            _heavy_running.discard(key)

__all__ = ["ACTIONS", "AccessError", "Settings", "User", "api_max_body_bytes", "cap_for", "check_inside", "for_request",
           "reached_remotely",
           "check_job_paths", "check_may", "check_upload_size", "is_anonymous", "is_loopback", "job_roots",
           "llm_base_url_editable", "llm_config_for", "may", "normalize_base_url", "operator_user",
           "owner_display", "resolve_data_path", "same_person", "settings", "visitor", "why_not", "why_not_save",
           "CEILINGS", "Ceiling", "Limits", "ceiling", "heavy_slot", "limits"]
