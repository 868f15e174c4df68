"""A reader's way through a study: which case and arm comes next, what may be shown, what may still be changed.

The rules, in one place (the Reader study page, the CLI and the tests call these; none keeps state of its own):

- a reader sees only their own cases, in their own recorded order, numbered by position ("case 3 of 20"): no
  file name, no label, no other reader's answer, and the model's output only in an aided read;
- a case is shown in an arm before it can be answered (the view is recorded; reading time runs from the start of
  the viewing the answer is given in: a reload or a return to the read starts a new one);
- in the sequential design the aided view of a case locks the unaided answers to it;
- in the crossover design session 2 opens ``washout_days`` after the reader finished session 1.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..errors import ConfigError
from .store import Reader, Study, StudyError, StudyStore


@dataclass(frozen=True)
class Task:
    """One read: a case in an arm."""

    case: int          # the case's number in the study (not shown to the reader)
    position: int      # 1-based place in this reader's list of reads
    total: int         # reads in all
    arm: str
    session: int
    given: dict = field(default_factory=dict)      # finding -> rating already given in this arm (a revisit)
    unaided: dict = field(default_factory=dict)    # aided read of the sequential design: the reader's unaided ratings


@dataclass(frozen=True)
class Waiting:
    """Crossover: session 1 is done; session 2 opens at ``until`` (epoch seconds)."""

    until: float
    done: int
    total: int


@dataclass(frozen=True)
class Done:
    total: int


def reads(study: Study, reader: Reader, halves: dict[int, int]) -> list[tuple[int, str, int]]:
    """(case, arm, session) of every read of this reader, in order."""
    d = study.design.design
    if d == "unaided":
        return [(c, "unaided", 1) for c in reader.order]
    if d == "sequential":
        return [(c, arm, 1) for c in reader.order for arm in ("unaided", "aided")]
    first = [(c, "aided" if halves[c] == reader.number % 2 else "unaided", 1) for c in reader.order]
    return first + [(c, "unaided" if arm == "aided" else "aided", 2) for c, arm, _ in first]


def _answered(store: StudyStore, study: Study, reader_no: int) -> dict[tuple[int, str], dict]:
    out: dict[tuple[int, str], dict] = {}
    for a in store.answers(study.id, reader_no):
        out.setdefault((a.case, a.arm), {})[a.finding] = a.rating
    return {k: v for k, v in out.items() if set(study.design.findings) <= set(v)}


def next_read(store: StudyStore, study_id: str, reader_no: int, now: float | None = None,
              visit: str | None = None) -> Task | Waiting | Done:
    """The reader's next unanswered read (shown and recorded as shown, in the viewing ``visit``: see
    :meth:`StudyStore.mark_shown`), the wash-out wait, or done."""
    now = now or time.time()
    study, reader = store.study(study_id), store.reader(study_id, reader_no)
    halves = {c.number: c.half for c in store.cases(study_id)}
    plan = reads(study, reader, halves)
    answered = _answered(store, study, reader_no)
    for i, (case, arm, session) in enumerate(plan, 1):
        if (case, arm) in answered:
            continue
        if session == 2:
            started, finished = store.sessions(study_id, reader_no).get(1, (None, None))
            if finished is None:    # session 1 was answered through before it was marked finished
                store.finish_session(study_id, reader_no, 1, now)
                finished = now
            until = finished + study.design.washout_days * 86400.0
            if now < until:
                return Waiting(until, i - 1, len(plan))
        if study.status != "open":
            raise StudyError("This study is closed: the organiser has ended reading.")
        store.start_session(study_id, reader_no, session, now)
        store.mark_shown(study_id, reader_no, case, arm, session, now, visit)
        unaided = answered.get((case, "unaided"), {}) if arm == "aided" and study.design.design == "sequential" else {}
        return Task(case, i, len(plan), arm, session, {}, unaided)
    return Done(len(plan))


def revisit(store: StudyStore, study_id: str, reader_no: int, position: int, now: float | None = None,
            visit: str | None = None) -> Task:
    """An earlier read of this reader (to look at or change an answer): only a read already shown. ``visit``: the
    viewing it is shown in again (a changed answer's reading time counts from there)."""
    study, reader = store.study(study_id), store.reader(study_id, reader_no)
    plan = reads(study, reader, {c.number: c.half for c in store.cases(study_id)})
    if not 1 <= position <= len(plan):
        raise StudyError(f"There is no read {position}: this study has {len(plan)}.")
    case, arm, session = plan[position - 1]
    if (case, arm) not in store.views(study_id, reader_no):
        raise StudyError("That case has not been shown to you yet.")
    if visit is not None:
        store.mark_shown(study_id, reader_no, case, arm, session, now, visit)
    answered = _answered(store, study, reader_no)
    unaided = answered.get((case, "unaided"), {}) if arm == "aided" and study.design.design == "sequential" else {}
    return Task(case, position, len(plan), arm, session, answered.get((case, arm), {}), unaided)


def locked(store: StudyStore, study: Study, reader_no: int, task: Task) -> str | None:
    """Why this read's answer can no longer be changed, or None."""
    if study.design.design == "sequential" and task.arm == "unaided" and \
            (task.case, "aided") in store.views(study.id, reader_no):
        return ("This unaided answer is final: the model's output for this case has been shown to you, and the "
                "study keeps the answer you gave before seeing it.")
    if study.status != "open":
        return "This study is closed: the organiser has ended reading."
    return None


def submit(store: StudyStore, study_id: str, reader_no: int, task: Task, ratings: dict[str, float],
           marks: dict[str, tuple[float, float] | None] | None = None, now: float | None = None) -> None:
    """Store the reader's ratings of ``task`` (every finding of the study, within the scale; marks as fractions
    of the image width and height). Nothing is written when anything is wrong."""
    study = store.study(study_id)
    if study.status != "open":
        raise StudyError("This study is closed: the organiser has ended reading; nothing was saved.")
    d = study.design
    missing = [f for f in d.findings if f not in ratings or ratings[f] is None]
    if missing:
        raise ConfigError(f"Rate every finding before going on: {', '.join(missing)} has no rating yet.")
    extra = sorted(set(ratings) - set(d.findings))
    if extra:
        raise ConfigError(f"{', '.join(extra)} is not read in this study.")
    lo, hi = d.scale_range
    bad = [f for f in d.findings if not (lo <= float(ratings[f]) <= hi)]
    if bad:
        raise ConfigError(f"Ratings are from {lo} to {hi} on this study's scale ({d.scale}): {', '.join(bad)}.")
    marks = dict(marks or {})
    for f, m in marks.items():
        if m is not None and not (0 <= m[0] <= 1 and 0 <= m[1] <= 1):
            raise ConfigError(f"The mark for {f} is outside the image.")
    views = store.views(study_id, reader_no)
    if (task.case, task.arm) not in views:
        raise StudyError("That case has not been shown to you in this arm yet; nothing was saved.")
    lock = "aided" if d.design == "sequential" and task.arm == "unaided" else None
    store.write_answers(study_id, reader_no, task.case, task.arm, views[(task.case, task.arm)][0],
                        {f: float(ratings[f]) for f in d.findings}, marks, locked_if_seen=lock, now=now)
    if d.design == "crossover" and task.session == 1:
        study_reads = reads(study, store.reader(study_id, reader_no),
                            {c.number: c.half for c in store.cases(study_id)})
        answered = _answered(store, study, reader_no)
        if all((c, a) in answered for c, a, s in study_reads if s == 1):
            store.finish_session(study_id, reader_no, 1, now)


def progress(store: StudyStore, study_id: str) -> list[dict]:
    """Per reader: reads answered of all, last answer, median reading time, crossover session times."""
    study = store.study(study_id)
    halves = {c.number: c.half for c in store.cases(study_id)}
    out = []
    for reader in store.readers(study_id):
        plan = reads(study, reader, halves)
        answered = _answered(store, study, reader.number)
        times = sorted(a.seconds for a in store.answers(study_id, reader.number) if a.seconds is not None)
        last = max((a.answered_at for a in store.answers(study_id, reader.number)), default=None)
        sessions = store.sessions(study_id, reader.number)
        out.append({"reader": reader.number, "name": reader.name, "done": sum(1 for c, a, _ in plan if (c, a) in answered),
                    "total": len(plan), "last_answer": last,
                    "median_seconds": times[len(times) // 2] if times else None,
                    "sessions": {s: {"started": v[0], "finished": v[1]} for s, v in sorted(sessions.items())}})
    return out


def why_not_organise(user, study: Study | None, settings) -> str | None:
    """None when ``user`` (a :class:`cxrcore.hosting.User`) may see and run ``study`` as its organiser (readers,
    links, progress, answers, analysis), or create one (``study`` None); otherwise why not. Creating a study runs
    a model over its cases, so it follows the job launch rule; a study is organised by whoever created it, an admin
    (``CXR_JOB_ADMINS``), the operator, and on one person's own machine by its user."""
    from .. import hosting

    if user.operator or settings.single_user or (user.signed_in and user.id.lower() in settings.admins):
        return None
    if study is None:
        return hosting.why_not(user, "launch", s=settings)
    if study.owner and study.owner.lower() == user.id.lower():
        return None
    return "Only the organiser who set this study up (or an admin) sees its readers, answers and analysis."
