"""A small Markdown-to-HTML renderer for the report's prose (the Method section is science.py's docstring).

Why not a dependency: the docstrings use a handful of constructs — paragraphs, `- ` lists, `# ` headings,
**bold**, *italic*, `code` — and the report must render them without one more package to install.
Everything else is escaped and shown as text.
"""

from __future__ import annotations

import html
import re

_INLINE = (
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*(.+?)\*\*"), r"<b>\1</b>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<i>\1</i>"),
)


def _inline(text: str) -> str:
    """Escape, then apply the inline rules; code spans are protected from the emphasis rules."""
    out, codes = [], []
    for i, part in enumerate(re.split(r"(`[^`]+`)", text)):
        if i % 2:
            codes.append(f"<code>{html.escape(part[1:-1])}</code>")
            out.append(f"\x00{len(codes) - 1}\x00")
        else:
            s = html.escape(part, quote=False)
            for pat, rep in _INLINE[1:]:
                s = pat.sub(rep, s)
            out.append(s)
    return re.sub(r"\x00(\d+)\x00", lambda m: codes[int(m.group(1))], "".join(out))


def _flush(blocks: list[str], para: list[str], items: list[str]) -> None:
    if para:
        blocks.append(f"<p>{_inline(' '.join(x.strip() for x in para))}</p>")
        para.clear()
    if items:
        blocks.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
        items.clear()


def markdown_to_html(text: str) -> str:
    """Blocks split on blank lines; a block whose lines start with `- ` is a list (continuation lines join the
    item above); `#`-lines are headings (h3/h4); other blocks are paragraphs."""
    blocks: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        para: list[str] = []
        items: list[str] = []

        for line in lines:
            s = line.strip()
            m = re.match(r"(#{1,3})\s+(.*)", s)
            if m:
                _flush(blocks, para, items)
                level = min(len(m.group(1)) + 2, 5)
                blocks.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            elif s.startswith(("- ", "* ")):
                if para:
                    _flush(blocks, para, items)
                items.append(s[2:])
            elif items and line.startswith((" ", "\t")):
                items[-1] += " " + s
            else:
                if items:
                    _flush(blocks, para, items)
                para.append(s)
        _flush(blocks, para, items)
    return "\n".join(blocks)
