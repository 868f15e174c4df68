"""Text from other people (and from models) made safe to put into Streamlit's Markdown.

Everything a page renders through ``st.markdown``, ``st.caption``, ``st.info`` / ``success`` / ``warning`` /
``error``, ``st.subheader``, widget labels, expander and tab labels, image captions, metric values and
``help`` tooltips is GitHub-flavoured Markdown: a job name, a card name, a sweep name, a dataset folder's
name, a label read from someone's CSV or an LLM's answer put there as it is can plant a link, an image
(fetched from anywhere by every visitor's browser), a heading or a fake notice, LaTeX (``$...$``) or a
Streamlit directive (``:red[...]``). :func:`md_text` escapes such text so it renders as the same literal
characters and nothing else. It is the one place that knows how (pages call it through ``ui.common``);
this module imports nothing, so ``cxrcore`` code that builds Markdown can use it too.

Text shown with ``st.text``, ``st.code``, in a dataframe or as a selectbox option is not Markdown and
must not be escaped (the backslashes would show).
"""
from __future__ import annotations

import re

# Every ASCII punctuation character that starts or ends Markdown / GFM / Streamlit syntax: CommonMark lets
# any ASCII punctuation be backslash-escaped, and an escaped one is always the literal character.
#   \ ` * _ { } [ ] ( ) # + - . ! |  emphasis, code, links, images, headings, lists, tables
#   < > &                            HTML (Streamlit drops it, but the text stays the text) and entities
#   ~ $ = :                          strikethrough, LaTeX, setext headings, directives / URL and emoji codes
#   @                                e-mail autolinks
SPECIAL = frozenset("\\`*_{}[]()#+-.!|<>&~$=:@")
_LINE_BREAKS = re.compile(r"\r\n|[\r\n\u0085\u2028\u2029\v\f]")
_SPACES = re.compile(r"[ \t\r\n\u0085\u2028\u2029\v\f]+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def _indent(line: str) -> str:
    body = line.lstrip(" ")
    return "\u00a0" * (len(line) - len(body)) + body


def md_text(text, single_line: bool = True) -> str:
    """``text`` (anything; ``str()`` of it, ``""`` for None) as Markdown that renders as exactly that text.

    Every Markdown-significant ASCII character is backslash-escaped (:data:`SPECIAL`), control characters
    are dropped. ``single_line`` (a name, a label, a path in a sentence): line breaks and runs of
    whitespace become one space, so the text cannot start a heading, a list or a quote on a line of its
    own. ``single_line=False`` (an LLM's explanation, a multi-line message): each line break is kept as a
    Markdown hard break (blank lines stay paragraph breaks).
    """
    if text is None:
        return ""
    s = _CONTROL.sub("", str(text))
    if single_line:
        s = _SPACES.sub(" ", s).strip()
    else:
        s = _LINE_BREAKS.sub("\n", s).replace("\t", "    ").strip("\n")
    out = "".join("\\" + c if c in SPECIAL else c for c in s)
    if not single_line:
        # leading spaces as no-break spaces: an indented line stays indented text, never a code block
        out = "\n".join(_indent(line.rstrip()) + "  " if line.strip() else "" for line in out.split("\n")).rstrip()
    return out


__all__ = ["SPECIAL", "md_text"]
