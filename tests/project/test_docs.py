"""The README and the guide in ``docs/`` show only what exists: every ``cxr`` command and option they
write is one the parser has, every REST endpoint is a route of the service, every ``CXR_*`` setting is
read somewhere in the code, and every file of the repository they name is there."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from conftest import CHECKPOINTS, REPO

DOCS = [REPO / "README.md", REPO / "ARCHITECTURE.md", *sorted((REPO / "docs").glob("*.md"))]
CODE_DIRS = ("cxrcore", "ui", "views", "scripts", "bench")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser | None]:
    """The sub-commands a parser takes next: its sub-parsers, or the choices of a first positional
    ``action`` (``cxr jobs list``), which lead to no parser of their own (None)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    for action in parser._actions:
        if not action.option_strings and action.dest == "action" and action.choices:
            return dict.fromkeys(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def cxr_mentions(text: str) -> list[str]:
    """Every ``cxr ...`` command line the text shows: lines of code blocks and inline code spans, each cut
    at a shell comment or a ``;`` (where a second command starts)."""
    out: list[str] = []
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for chunk in [line for b in blocks for line in b.splitlines()] + spans:
        for part in re.split(r";|&&|\|\|", chunk.split(" # ")[0]):
            part = part.strip()
            m = re.search(r"(?:^|\s|\()cxr\s+([a-z].*)$", part)
            if m:
                out.append("cxr " + m.group(1))
    return out


def check_command(line: str, parser: argparse.ArgumentParser) -> list[str]:
    """What is wrong with one ``cxr`` line: an unknown command, or an option its command does not have.
    ``a|b`` alternatives of a sub-command (``cxr jobs list | show ID``) are each checked."""
    words = line.replace("[", " ").replace("]", " ").split()[1:]
    problems: list[str] = []
    current, chain = parser, ["cxr"]
    subs = _subparsers(current)
    while words and subs:
        word = words[0]
        if word in ("...", "COMMAND") or word.startswith("-"):
            break
        if word not in subs:
            return [f"{line!r}: no command {' '.join(chain + [word])!r}"]
        for alt in (" ".join(words[1:]).split("|")[1:] if current is not parser else []):   # `jobs list | show ID`
            name = alt.split()[0] if alt.split() else ""
            if name.isalpha() and name.islower() and name not in subs:
                problems.append(f"{line!r}: no command {' '.join(chain + [name])!r}")
        if subs[word] is None:   # an action word: the options are its command's
            chain, words = chain + [word], words[1:]
            break
        current, chain = subs[word], chain + [word]
        words = words[1:]
        subs = _subparsers(current)
    known = _options(current)
    for word in words:
        flag = word.split("=")[0].rstrip(",.:)")
        if flag.startswith("--") and len(flag) > 2 and flag not in known:
            problems.append(f"{line!r}: {' '.join(chain)} has no option {flag}")
    return problems


def test_the_checker_finds_what_is_wrong():
    """Guards against a checker that passes by seeing nothing."""
    from cxrcore.cli import build_parser

    parser = build_parser()
    text = "```bash\ncxr predict IMAGE --checkpoint C --no-such-flag\ncxr frobnicate\n```\n`cxr jobs list | show ID`"
    lines = cxr_mentions(text)
    assert lines == ["cxr predict IMAGE --checkpoint C --no-such-flag", "cxr frobnicate", "cxr jobs list | show ID"]
    assert check_command(lines[0], parser) == [f"{lines[0]!r}: cxr predict has no option --no-such-flag"]
    assert "no command 'cxr frobnicate'" in check_command(lines[1], parser)[0]
    assert check_command(lines[2], parser) == []
    assert check_command("cxr jobs list | frob ID", parser)
    assert check_command("cxr sweep start --data D --trials 6", parser) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_cxr_command_and_option_shown_exists(doc):
    from cxrcore.cli import build_parser

    parser = build_parser()
    lines = cxr_mentions(_text(doc))
    problems = [p for line in lines for p in check_command(line, parser)]
    assert not problems, "\n".join(problems)


def test_the_guide_shows_the_main_commands():
    seen = {line.split()[1] for doc in DOCS for line in cxr_mentions(_text(doc)) if len(line.split()) > 1}
    from cxrcore.cli import build_parser

    missing = set(_subparsers(build_parser())) - seen
    assert not missing, f"commands of `cxr` the README and docs/ never show: {sorted(missing)}"


def test_every_rest_endpoint_shown_is_a_route():
    from cxrcore.api import Service, create_app

    app = create_app(Service([CHECKPOINTS / "baseline"]))
    while not hasattr(app, "routes"):   # the ASGI middlewares around the FastAPI app
        app = app.app
    routes = {(method, route.path) for route in app.routes for method in getattr(route, "methods", None) or ()}
    shown = set()
    for doc in DOCS:
        shown |= set(re.findall(r"`(GET|POST|PUT|DELETE) (/[a-z0-9/_{}.-]*)`", _text(doc)))
    assert shown, "the docs show no endpoint: the pattern no longer matches them"
    missing = sorted(f"{m} {p}" for m, p in shown if (m, p) not in routes)
    assert not missing, f"endpoints shown in the docs that the service does not have: {missing}"


def _code_text() -> str:
    parts = [p.read_text(encoding="utf-8") for d in CODE_DIRS for p in (REPO / d).rglob("*.py")]
    parts += [(REPO / f).read_text(encoding="utf-8") for f in ("app.py", "run.sh", "test.sh", "tests/conftest.py")]
    return "\n".join(parts)


def test_every_setting_shown_is_read_by_the_code():
    code = _code_text()
    shown = {v for doc in DOCS for v in re.findall(r"\b(CXR_[A-Z0-9_]+)\b", _text(doc))}
    assert shown
    missing = sorted(v for v in shown if v not in code)
    assert not missing, f"settings the docs name that no code reads: {missing}"


def test_every_repository_file_named_exists():
    pattern = r"`((?:cxrcore|bench|tests|views|ui|scripts|checkpoints|docs)/[A-Za-z0-9_./-]+)`"
    problems = []
    for doc in DOCS:
        for path in re.findall(pattern, _text(doc)):
            path = path.rstrip(".")
            if any(ch in path for ch in "*<>") or path.endswith("/..."):
                continue
            if not (REPO / path).exists() and not (REPO / (path + ".py")).exists():
                problems.append(f"{doc.name}: {path}")
    assert not problems, f"files the docs name that are not in the repository: {problems}"


def test_relative_links_resolve():
    problems = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", _text(doc)):
            if not (doc.parent / target).exists():
                problems.append(f"{doc.name} -> {target}")
    assert not problems, problems


def test_the_readme_is_the_front_door():
    """The README says what the tool is, shows Compare, gives the two commands and points on (issue 20 §3)."""
    readme = _text(REPO / "README.md")
    assert len(readme.splitlines()) <= 160
    assert "./run.sh" in readme and "./test.sh" in readme
    shot = re.search(r"!\[[^\]]*\]\(([^)]+\.png)\)", readme)
    assert shot and (REPO / shot.group(1)).is_file()
    for page in (REPO / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, f"the README does not point to docs/{page.name}"
