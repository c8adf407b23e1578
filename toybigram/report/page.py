"""HTML building blocks: one self-contained page (inline CSS, PNG images as base64 data URIs, no scripts)."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1400px; padding: 1.5em 2em 4em; color: #1d1d1f; line-height: 1.45; font-size: 16px; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 2px solid #ddd; padding-bottom: 0.2em; }
h3 { margin-top: 1.5em; }
nav { margin: 0.8em 0 1.5em; } nav a { margin-right: 1.2em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.95em; }
th, td { border: 1px solid #d0d0d0; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f2f2f4; } td.num { text-align: right; font-family: ui-monospace, Menlo, Consolas, monospace; white-space: nowrap; }
tr.group td { background: #fafafa; font-weight: 600; }
.status { display: inline-block; padding: 0.1em 0.7em; border-radius: 0.8em; color: white; font-weight: 600; }
.finished { background: #2e7d32; } .diverged { background: #e65100; } .failed { background: #c62828; }
.interrupted { background: #546e7a; }
.note { background: #fff8e1; border-left: 4px solid #f9a825; padding: 0.5em 1em; margin: 0.8em 0; }
.muted { color: #666; } figure { margin: 1em 0 2em; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.95em; margin-top: 0.3em; max-width: 1100px; }
.prompt { font-family: ui-monospace, Menlo, Consolas, monospace; line-height: 2; word-wrap: break-word; }
.prompt span { display: inline-block; padding: 0 0.25em; margin: 1px; border: 1px solid #ddd; border-radius: 3px; line-height: 1.6; }
.prompt .trigger { color: #c62828; font-weight: 700; border-color: #c62828; }
.prompt .target { background: #c8e6c9; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.row > figure, .row > table { margin-top: 0; } .row > figure { max-width: 640px; }
code { background: #f2f2f4; padding: 0 0.25em; border-radius: 3px; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def table(headers: list[str] | None, rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """A table of already-escaped cells; columns in ``numeric`` are right-aligned in a monospaced font.

    A row of one cell is a heading across the table; ``headers=None`` gives a table without a header row.
    """
    width = len(headers) if headers else max(len(row) for row in rows)
    head = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>" if headers else ""
    body = []
    for row in rows:
        if len(row) == 1:  # a full-width group heading
            body.append(f'<tr class="group"><td colspan="{width}">{row[0]}</td></tr>')
            continue
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>"


def image(png: bytes, alt: str, caption: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    text = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{text}</figure>'


def row(*items: str) -> str:
    """Items side by side, wrapping on a narrow window."""
    return f'<div class="row">{"".join(items)}</div>'


def note(text: str) -> str:
    return f'<div class="note">{text}</div>'


def status_badge(status: str) -> str:
    return f'<span class="status {esc(status)}">{esc(status)}</span>'


@dataclass
class Section:
    anchor: str
    title: str
    body: str


def page(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole HTML document with a table of contents."""
    nav = "".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in sections)
    parts = "".join(f'<section id="{s.anchor}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1><p>{subtitle}</p><nav>{nav}</nav>{parts}</body></html>\n"
    )
