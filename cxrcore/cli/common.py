"""What the ``cxr`` commands share: the lazily built command parser, progress bars, help texts and the
flag blocks derived from the declarations (filters, backends, slurm options)."""
from __future__ import annotations

import argparse
from pathlib import Path
from dataclasses import dataclass
from typing import Callable

from ..errors import CXRError

from ..models.names import library_hint

# The library models a checkpoint option takes by name, typed from the model-family registry's names (no torch).
LIBRARY_HINT = library_hint()
CHECKPOINT_HELP = f"a checkpoint folder, a run folder, or {LIBRARY_HINT} (weights from torchxrayvision's cache)"


class CommandParser(argparse.ArgumentParser):
    """A command's parser whose options are added on first use (parsing, help, or a look at its actions), so
    ``cxr jobs list`` does not import what ``cxr predict``'s choices come from (torch)."""

    def __init__(self, *args, build: Callable[[argparse.ArgumentParser], None] | None = None, **kw):
        self._build = None
        super().__init__(*args, **kw)
        self._build = build

    @property
    def _actions(self) -> list:
        build, self._build = self.__dict__.get("_build"), None
        if build is not None:
            build(self)
        return self.__dict__["_action_list"]

    @_actions.setter
    def _actions(self, value: list) -> None:
        self.__dict__["_action_list"] = value


@dataclass(frozen=True)
class Command:
    """One ``cxr`` command: its name, one-line help, description and the function that adds its options
    (and ``func``, the function that runs it)."""

    name: str
    help: str
    build: Callable[[argparse.ArgumentParser], None]
    description: str | None = None

    def register(self, sub) -> None:
        """Add this command's sub-parser to ``sub`` (its options are added when it is first used)."""
        kw = {"description": self.description} if self.description else {}
        sub.add_parser(self.name, help=self.help, build=self.build, **kw)


def bar(desc: str):
    from tqdm import tqdm

    state = {"bar": None}

    def update(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)
        b = state["bar"]
        b.total = total
        b.n = done
        b.refresh()
        if done >= total:
            b.close()
            state["bar"] = None

    return update


def train_progress():
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(phase: str, done: int, total: int, info: dict) -> None:
        b = bars.get(phase)
        if b is None or b.total != total:
            if b is not None:
                b.close()
            unit = "img" if phase == "cache" else "step"
            b = bars[phase] = tqdm(total=total, desc=phase, unit=unit, dynamic_ncols=True)
        b.n = done
        if "loss" in info:
            b.set_postfix(epoch=info.get("epoch"), loss=f"{info['loss']:.3f}", ips=f"{info.get('images_per_s', 0):.0f}")
        b.refresh()
        if done >= total:
            b.close()
            bars.pop(phase, None)

    return update


def views(text):
    if text is None:
        return None
    out = [v.strip().upper() for v in str(text).split(",") if v.strip()]
    if not out:
        raise CXRError(f"--views needs view positions such as PA or PA,AP, not {text!r}.")
    return out


def add_filter_flags(s, frontal_default: bool) -> None:
    g = s.add_argument_group("filters")
    g.add_argument("--frontal-only", action=argparse.BooleanOptionalAction, default=frontal_default,
                   help="keep frontal (PA/AP) images only" + (" (default)" if frontal_default else ""))
    g.add_argument("--views", help="keep only these view positions, comma-separated, e.g. PA or PA,AP")
    g.add_argument("--first-n-studies", type=int, help="keep each patient's first N studies (by study order)")
    g.add_argument("--age-min", type=float)
    g.add_argument("--age-max", type=float)
    g.add_argument("--sex", choices=["M", "F"])


def add_backend_flag(s, help: str | None = None) -> None:
    """``--backend``: the declared job backends (cxrcore.jobs.store.BACKENDS), the first the default."""
    from ..jobs.store import BACKENDS

    s.add_argument("--backend", choices=list(BACKENDS), default=BACKENDS[0], **({"help": help} if help else {}))


def slurm_dest(name: str) -> str:
    """The argparse dest of a slurm option's flag (``conf`` is ``--slurm-conf``)."""
    return "slurm_conf" if name == "conf" else name


def add_slurm_flags(s, visitor_safe: bool) -> list[str]:
    """--partition, --time, ... (conf: --slurm-conf): the slurm options as declared in cxrcore/jobs/config.py
    (:func:`cxrcore.launch.slurm_fields`), where their forms are checked, for the CLI as for everyone.
    Returns the options' names."""
    from ..launch import slurm_fields

    fields = slurm_fields(visitor_safe)
    for o in fields:
        s.add_argument("--slurm-conf" if o.name == "conf" else f"--{o.name}", dest=slurm_dest(o.name),
                       type=int if o.types == (int,) else str, help=f"slurm: {o.help}")
    return [o.name for o in fields]


def slurm_values(a, names=None, visitor_safe: bool = False) -> dict:
    """The slurm options given on the command line (``conf`` left out: it names the cluster)."""
    from ..launch import slurm_fields

    names = names or [o.name for o in slurm_fields(visitor_safe)]
    return {k: v for k in names if k != "conf" and (v := getattr(a, slurm_dest(k), None)) is not None}


def check_mc_samples(n: int) -> None:
    """``--mc-samples``: from 0 to :data:`cxrcore.explain.uncertainty.MAX_SAMPLES`, else ConfigError."""
    from ..errors import ConfigError
    from ..explain.uncertainty import MAX_SAMPLES

    if not 0 <= n <= MAX_SAMPLES:
        raise ConfigError(f"--mc-samples must be from 0 to {MAX_SAMPLES}, not {n}.")


def use_site(predictor, checkpoint, site: str | None) -> None:
    """``--site S``: ``predictor`` as used at site S (its card's profile, :meth:`cxrcore.models.card.Card.with_site`).
    A shipped model's profiles are saved in the workspace's copy of it (its own files stay untouched): when the
    copy holds S, the error says to use the copy."""
    from ..errors import CheckpointError

    try:
        predictor.set_card(predictor.card.with_site(site))
    except CheckpointError as exc:
        from ..eval.thresholds import save_target

        try:
            folder = save_target(checkpoint).folder
            from ..checkpoint import read_card

            held = site in (read_card(folder).sites or {}) and Path(folder).resolve() != Path(checkpoint).resolve()
        except Exception:  # noqa: BLE001 - no hint then: the first error stands
            held = False
        if held:
            raise CheckpointError(f"{exc} The profile was saved in the workspace's copy of this model (its own files "
                                  f"are never changed): use --checkpoint {folder}.") from None
        raise
