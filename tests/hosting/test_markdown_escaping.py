"""Other people's text (job, card, sweep and dataset names, labels from a CSV, an LLM's answer) is shown as
text, never as Markdown: cxrcore.mdtext.md_text, used by every page that puts such text into Markdown."""
from __future__ import annotations

import html
import re

import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO, kill_jobs  # also puts the repository root on sys.path (`ui`, `cxrcore`)
from cxrcore.jobs import JobStore
from cxrcore.mdtext import SPECIAL, md_text

EVIL = ("[click](http://evil.example/x) ![x](http://evil.example/img.png) **URGENT** $x$ <b>bold</b> "
        ":red[alert] www.evil.example mail@evil.example http://evil.example/y ~~gone~~ `code` &lt; | a | b |")
BLOCKS = "# Session expired\n> sign in at evil\n---\n1. first\n- item\nTitle\n===\n    indented"
UNESCAPED = re.compile(r"(?<!\\)[\[\]()*_`$<>#!|~:@&=]")  # a special character without its backslash


def render(text: str) -> str:
    """CommonMark + GFM tables / strikethrough (markdown-it-py, which Streamlit's own dependencies bring),
    as Streamlit's Markdown parses the structure."""
    markdown_it = pytest.importorskip("markdown_it")
    return markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(text)


def test_md_text_escapes_every_markdown_construct():
    out = md_text(EVIL)
    assert "](" not in out and "\\[click\\]\\(http\\:" in out
    assert not UNESCAPED.search(out.replace("\\\\", "")), out  # every special character escaped
    rendered = render(out)
    for tag in ("<a", "<img", "<strong", "<em", "<b>", "<code", "<del", "<s>", "<table", "<h1", "<blockquote"):
        assert tag not in rendered, (tag, rendered)
    # it reads as the very same text: the escapes only make the characters literal
    assert html.unescape(re.sub(r"</?p>", "", rendered)).strip() == EVIL
    assert "\\$x\\$" in out and "\\:red\\[alert\\]" in out  # no LaTeX, no Streamlit colour directive


def test_md_text_single_line_cannot_start_a_block():
    out = md_text(BLOCKS)
    assert "\n" not in out
    rendered = render(out)
    assert rendered.count("<p>") == 1 and not re.search(r"<(h\d|blockquote|hr|ol|ul|li|pre|code)\b", rendered), rendered


def test_md_text_multi_line_keeps_lines_as_text():
    out = md_text(BLOCKS + "\n\n[link](http://evil.example)", single_line=False)
    rendered = render(out)
    assert not re.search(r"<(h\d|blockquote|hr|ol|ul|li|pre|code|a)\b", rendered), rendered
    assert rendered.count("<br />") >= 5 and "# Session expired" in html.unescape(rendered)
    assert "\u00a0\u00a0\u00a0\u00a0indented" in rendered  # indentation kept as text, not a code block


def test_md_text_edge_cases():
    assert md_text(None) == "" and md_text(42) == "42" and md_text("plain words") == "plain words"
    assert md_text("a\x00b\x1bc") == "abc"  # control characters dropped
    assert md_text("  two\r\n\u2028lines  ") == "two lines"
    assert set("\\`*_[]()#+-.!|<>{}~$") <= SPECIAL  # the characters the issue names, and more
    assert md_text("\\") == "\\\\" and md_text("a\\[b") == "a\\\\\\[b"


# --------------------------------------------------------------------------- the Training page

@pytest.fixture
def ws(tmp_path, monkeypatch, app_home):
    """An isolated workspace (its own job table) that sees the session's phantom datasets."""
    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    monkeypatch.setenv("CXR_CHECKPOINTS", str(tmp_path / "no-shipped-checkpoints"))
    (tmp_path / "datasets").symlink_to(app_home / "datasets", target_is_directory=True)
    yield tmp_path
    kill_jobs(tmp_path)


def markdown_values(at: AppTest) -> list[str]:
    """Everything on the page Streamlit renders as Markdown."""
    out = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "subheader", "title"):
        out += [str(e.value) for e in getattr(at, kind)]
    return out


def test_training_page_shows_a_job_named_like_a_link_as_text(ws):
    store = JobStore()
    job = store.create({"data": "/nowhere", "epochs": 1}, name=EVIL)
    store.mark(job.id, "failed", error="the data folder is gone; see [the fix](http://evil.example/fix)")
    at = AppTest.from_file(str(REPO / "views" / "training.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="train_watch").value == job.id
    header = [v for v in markdown_values(at) if job.id in v and "click" in v]
    assert header and md_text(EVIL) in header[0], header  # the job's header: its name, escaped
    assert any("\\[the fix\\]\\(http\\://evil" in e.value for e in at.error), [e.value for e in at.error]
    for value in markdown_values(at):
        assert not re.search(r"(?<!\\)\]\(http", value), value  # no link anywhere on the page
        assert "![x]" not in value and "**URGENT**" not in value
    assert EVIL in set(at.dataframe[0].value["name"])  # a dataframe shows text as it is: not escaped


def test_the_overlay_slider_shows_model_names_as_text():
    """The Compare page's slider is HTML in a component frame that runs scripts: a run named like markup
    must stay text there."""
    from ui.common import compare_slider_html

    evil = '<img src=x onerror="alert(document.cookie)">'
    page = compare_slider_html(b"\x89PNG", b"\x89PNG", evil, "fine-tuned <b>v2</b>")
    assert "<img src=x" not in page and "onerror=\"alert" not in page and "<b>v2</b>" not in page
    assert "&lt;img src=x onerror=&quot;alert(document.cookie)&quot;&gt;" in page
    assert "fine-tuned &lt;b&gt;v2&lt;/b&gt;" in page
