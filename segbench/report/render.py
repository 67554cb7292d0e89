"""Render a report (sections of paragraphs, tables, figures, code) as Markdown and as self-contained HTML.

Both renderers work from the same :class:`Report` so the two files always say the same thing. Every string
that may come from the user (model names, case ids, config values, reasons, file names) is escaped:
``html.escape`` in HTML, and in Markdown the characters that would become raw HTML or break a table. The
HTML page also carries a Content-Security-Policy that forbids scripts and remote loads, as a second line of
defence; figures are embedded as base64 PNG and the CSS is inline, so the page opens offline.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from urllib.parse import quote

from segbench.report.tables import Table


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class TableBlock:
    table: Table
    caption: str = ""


@dataclass(frozen=True)
class FigureBlock:
    """A PNG figure; ``name`` is its file name under ``figures/``."""

    name: str
    png: bytes
    caption: str


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Links:
    """``label: text, text`` where each text links to its (relative) ``href``; ``links`` = ((text, href), …)."""

    label: str
    links: tuple[tuple[str, str], ...]


Block = Paragraph | Bullets | TableBlock | FigureBlock | Code | Links


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Report:
    title: str
    sections: tuple[Section, ...]


# ---------------------------------------------------------------------------------------------- Markdown

# Only what could open an HTML tag or entity, break a table cell or quote a line is escaped, so "p < 0.001"
# stays readable in the raw file.
_MD_PATTERNS = (
    (re.compile(r"&(?=[#A-Za-z])"), "&amp;"),
    (re.compile(r"<(?=[A-Za-z/!?])"), "&lt;"),
    (re.compile(r">"), "&gt;"),
    (re.compile(r"\|"), "\\|"),
    (re.compile(r"\*"), "\\*"),  # "HD95*" (the penalised mean) must not open emphasis
    (re.compile(r"[\r\n]+"), " "),
)


def md_escape(text: str) -> str:
    """Escape text for Markdown: no raw HTML, no table breaks, one line."""
    text = str(text)
    for pattern, replacement in _MD_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _md_table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(md_escape(c) for c in table.columns) + " |"]
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    for r, row in enumerate(table.rows):
        cells = [f"**{md_escape(cell)}**" if (r, c) in table.best else md_escape(cell) for c, cell in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    if not table.rows:
        lines.append("| " + " | ".join(["(none)"] + [""] * (len(table.columns) - 1)) + " |")
    return lines


def _fence(text: str) -> str:
    # A fence longer than any backtick run inside, so config values cannot close the block early.
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def render_markdown(report: Report) -> str:
    """The report as GitHub-flavoured Markdown; figures linked as ``figures/<name>``."""
    lines = [f"# {md_escape(report.title)}", ""]
    for section in report.sections:
        lines += [f"## {md_escape(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, Paragraph):
                lines += [md_escape(block.text), ""]
            elif isinstance(block, Bullets):
                lines += [f"- {md_escape(item)}" for item in block.items] + [""]
            elif isinstance(block, TableBlock):
                if block.caption:
                    lines += [f"*{md_escape(block.caption)}*", ""]
                lines += _md_table(block.table) + [""]
            elif isinstance(block, FigureBlock):
                lines += [f"![{md_escape(block.caption)}](figures/{block.name})", ""]
            elif isinstance(block, Code):
                fence = _fence(block.text)
                lines += [fence, block.text, fence, ""]
            elif isinstance(block, Links):
                items = ", ".join(f"[{md_escape(text)}]({quote(href)})" for text, href in block.links)
                lines += [f"{md_escape(block.label)}: {items}", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
/* Separate borders: with collapsed ones a sticky first column would lose its cell borders while scrolling. */
table { border-collapse: separate; border-spacing: 0; margin: .6rem 0 1.2rem; font-size: .86rem;
        border-top: 1px solid #ccc; border-left: 1px solid #ccc; }
th, td { border-right: 1px solid #ccc; border-bottom: 1px solid #ccc; padding: .25rem .5rem; text-align: right;
         white-space: nowrap; }
th { background: #f0f0f0; white-space: normal; vertical-align: bottom; }
td:first-child, th:first-child { text-align: left; }
/* The model column stays in view when a wide table scrolls sideways (narrow windows, phones). */
td:first-child, th:first-child { position: sticky; left: 0; z-index: 1; background: #fff; }
th:first-child { background: #f0f0f0; }
td.best { font-weight: bold; background: #e3f4e1; }
code { background: #f0f0f0; padding: 0 .25em; border-radius: 3px; font-size: .9em; }
.caption { font-style: italic; color: #555; margin-bottom: .2rem; }
figure { display: inline-block; margin: .5rem 1rem 1rem 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85rem; color: #555; }
pre { background: #f6f6f6; padding: .6rem; overflow-x: auto; font-size: .8rem; }
.table-wrap { overflow-x: auto; max-width: 100%; }
ul, p { overflow-wrap: anywhere; }
@media (max-width: 640px) { body { margin: 1rem auto; padding: 0 .5rem; } table { font-size: .78rem; } }
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


_CODE_SPAN = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    """Escaped text in which Markdown code spans (`like this`) become ``<code>`` elements."""
    return _CODE_SPAN.sub(lambda m: f"<code>{m.group(1)}</code>", _esc(text))


def _html_table(block: TableBlock) -> list[str]:
    table = block.table
    out = ['<div class="table-wrap">']
    if block.caption:
        out.append(f'<div class="caption">{_inline(block.caption)}</div>')
    out.append("<table>")
    out.append("<thead><tr>" + "".join(f"<th>{_esc(c)}</th>" for c in table.columns) + "</tr></thead>")
    out.append("<tbody>")
    for r, row in enumerate(table.rows):
        cells = "".join(
            f'<td class="best">{_inline(cell)}</td>' if (r, c) in table.best else f"<td>{_inline(cell)}</td>"
            for c, cell in enumerate(row)
        )
        out.append(f"<tr>{cells}</tr>")
    if not table.rows:
        out.append(f'<tr><td colspan="{len(table.columns)}">(none)</td></tr>')
    out.append("</tbody></table></div>")
    return out


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (inline CSS, base64 PNG figures, no scripts)."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_esc(_CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(report.title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{_esc(report.title)}</h1>",
    ]
    for section in report.sections:
        out.append(f"<section><h2>{_esc(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Paragraph):
                out.append(f"<p>{_inline(block.text)}</p>")
            elif isinstance(block, Bullets):
                out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>")
            elif isinstance(block, TableBlock):
                out += _html_table(block)
            elif isinstance(block, FigureBlock):
                data = base64.b64encode(block.png).decode("ascii")
                out.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(block.caption)}">'
                    f"<figcaption>{_inline(block.caption)}</figcaption></figure>"
                )
            elif isinstance(block, Code):
                out.append(f"<pre>{_esc(block.text)}</pre>")
            elif isinstance(block, Links):
                items = ", ".join(f'<a href="{_esc(quote(href))}">{_esc(text)}</a>' for text, href in block.links)
                out.append(f"<p>{_esc(block.label)}: {items}</p>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
