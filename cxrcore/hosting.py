"""What visitors of a shared server may do: the operator's settings and the checks that apply them.

The app is one process serving many browser sessions; this module holds no state. Every check is a
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

The CLI and Python callers are the operator's own tools (:func:`operator_user`): job rights do not
restrict them; the data roots do, in the job layer, whenever ``CXR_DATA_ROOTS`` is set.
"""
from __future__ import annotations

import getpass
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from .errors import AccessError

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
OPENAI_BASE_URL = "https://api.openai.com/v1"  # the openai client's default endpoint
DEFAULT_MAX_UPLOAD_MB = 32.0      # a chest radiograph, even an uncompressed 16-bit DICOM, is far below
DEFAULT_HOSTED_JOBS_PER_USER = 2
DEFAULT_HOSTED_LLM_PER_HOUR = 20  # explanation requests with the server's key, per signed-in visitor (see explain/budget.py)
ACTIONS = ("launch", "cancel", "resume")
LAUNCHER_MODES = ("everyone", "signed-in", "nobody")
ANONYMOUS = "anonymous"

ENV_ADDRESS = "CXR_ADDRESS"
ENV_HOSTED = "CXR_HOSTED"
ENV_ROOTS = "CXR_DATA_ROOTS"
ENV_LLM_ALLOWED = "CXR_LLM_ALLOWED_BASE_URLS"
ENV_LAUNCHERS = "CXR_JOB_LAUNCHERS"
ENV_ADMINS = "CXR_JOB_ADMINS"
ENV_MAX_JOBS = "CXR_MAX_JOBS_PER_USER"
ENV_LLM_PER_HOUR = "CXR_LLM_REQUESTS_PER_HOUR"
ENV_MAX_UPLOAD = "CXR_MAX_UPLOAD_MB"


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
    problems: tuple[str, ...] = field(default=())  # settings that could not be read (shown to the operator)

    @property
    def hosted(self) -> bool:
        """A shared server: an address other visitors can reach, or CXR_HOSTED=1."""
        return self.hosted_flag or (self.address is not None and not is_loopback(self.address))

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
    return Settings(address=address, hosted_flag=(env.get(ENV_HOSTED) or "").strip().lower() in ("1", "true", "yes"),
                    data_roots=tuple(roots), llm_allowed=tuple(dict.fromkeys(allowed)),
                    llm_allowed_set=bool(_split(env.get(ENV_LLM_ALLOWED), ", \n")), launchers=launchers,
                    admins=tuple(a.lower() for a in _split(env.get(ENV_ADMINS))), max_jobs_per_user=cap,
                    max_upload_mb=upload, llm_per_hour=llm_cap, problems=tuple(problems))


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
    """AccessError when a training config's ``data`` or ``init`` folder lies outside :func:`job_roots`
    (symlinks and ``..`` resolved). Library models (``xrv:…``) are names, not paths."""
    roots = job_roots(s)
    if roots is None or not isinstance(config, dict):
        return
    for key in ("data", "init"):
        value = config.get(key)
        if not value or not isinstance(value, str):
            continue
        if key == "init":
            from .models.library import library_ref

            if library_ref(value):
                continue
        try:
            resolved = Path(value).expanduser().resolve()
        except (OSError, RuntimeError, ValueError) as exc:
            raise AccessError(f"The {key} folder {value} cannot be resolved ({exc}).") from None
        check_inside(resolved, roots, value)


# --------------------------------------------------------------------------- LLM endpoints

def normalize_base_url(url: str) -> str:
    """``scheme://host[:port]/path`` in lower case without a trailing slash; AccessError for anything
    that is not a plain http(s) URL (credentials, query or fragment in it)."""
    text = (url or "").strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise AccessError(f"{text!r} is not a valid URL.") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise AccessError(f"{text!r} is not an http(s) URL.")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise AccessError(f"{text!r}: a base URL carries no user name, password, query or fragment.")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme.lower()]
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


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
    from .explain.llm import LLMConfig

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


def visitor(user_info: Mapping | None, session_token: str, s: Settings) -> User:
    """The app's visitor from Streamlit's ``st.user`` (signed in when ``is_logged_in`` is true) and a
    random token kept in the session. Not signed in: the OS user on this machine (the app is theirs),
    ``anonymous#<token>`` on a shared server."""
    info = dict(user_info or {})
    if info.get("is_logged_in") is True:
        ident = str(info.get("email") or info.get("preferred_username") or info.get("sub") or info.get("name") or "")
        if ident:
            return User(id=ident.lower() if "@" in ident else ident, name=str(info.get("name") or ident), signed_in=True)
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


def may(user: User, action: str, job=None, s: Settings | None = None) -> bool:
    return why_not(user, action, job, s) is None


def check_may(user: User, action: str, job=None, s: Settings | None = None) -> None:
    reason = why_not(user, action, job, s)
    if reason is not None:
        raise AccessError(reason)


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


__all__ = ["ACTIONS", "AccessError", "Settings", "User", "api_max_body_bytes", "cap_for", "check_inside",
           "check_job_paths", "check_may", "check_upload_size", "is_anonymous", "is_loopback", "job_roots",
           "llm_base_url_editable", "llm_config_for", "may", "normalize_base_url", "operator_user",
           "owner_display", "resolve_data_path", "same_person", "settings", "visitor", "why_not"]
