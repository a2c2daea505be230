"""The page's building blocks: escaping, tables, figures embedded as base64 PNG, sections, the page.

Everything the page shows is inside the one file (CSS inline, images as ``data:image/png;base64``),
so it opens offline and can be mailed or attached to an issue; nothing is fetched and there is no
JavaScript. A section is a :class:`Section` (plain data); ``page`` lays them out with a table of
contents. Figures are matplotlib ``Figure`` objects (no pyplot state) or PNG files already on disk.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

DPI = 80  # small but legible: the page stays a few hundred kB to a few MB

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1150px;
padding:0 1.2em 3em;color:#222;line-height:1.4}
h1{margin-top:.8em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.5em 0;font-size:.88em}th,td{border:1px solid #ddd;padding:.2em .5em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
pre{background:#f6f8fa;padding:.6em;white-space:pre-wrap;overflow-wrap:anywhere;font-size:.85em}code{background:#f6f8fa;padding:0 .2em}
.note{color:#8a5a00;background:#fff8e6;border-left:4px solid #f0b400;padding:.3em .6em}
.missing{color:#a00}figure{display:inline-block;margin:.4em .8em .4em 0;vertical-align:top}
figcaption{font-size:.82em;color:#555;max-width:600px}nav a{margin-right:1em}.wide{overflow-x:auto}
.small{font-size:.85em;color:#555}
"""


@dataclass
class Section:
    """One part of the page. ``id`` is the stable HTML anchor (``#data``, ``#search``, ...);
    ``missing`` names what the run lacks for it (empty: complete)."""

    id: str
    title: str
    body: str
    missing: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "complete" if not self.missing else "partial"


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def p(text: str, cls: str | None = None) -> str:
    """A paragraph of already-escaped (or trusted) HTML."""
    return f'<p class="{cls}">{text}</p>' if cls else f"<p>{text}</p>"


def note(text: str) -> str:
    """A visible note for something the run does not have (escaped)."""
    return p(esc(text), "note")


def code(text: str) -> str:
    return f"<code>{esc(text)}</code>"


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def h3(text: str, id: str | None = None) -> str:
    return f'<h3 id="{esc(id)}">{esc(text)}</h3>' if id else f"<h3>{esc(text)}</h3>"


def table(df, *, id: str | None = None, floats: str = "{:.4f}", index: bool = False) -> str:
    """``df`` as an HTML table (pandas ``to_html``, escaped); floats with ``floats``, NaN/None as '–'."""
    out = df.to_html(index=index, escape=True, border=0, na_rep="–", table_id=id,
                     float_format=lambda v: floats.format(v))
    return f'<div class="wide">{out}</div>'  # a wide table scrolls by itself, not the page


def png_bytes(fig, dpi: int = DPI) -> bytes:
    """A matplotlib Figure as PNG bytes (Agg canvas; the figure is released)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _close(fig)
    return buf.getvalue()


def _close(fig) -> None:
    """pyplot keeps figures that Optuna's plots open; ours are plain Figures it does not know."""
    import sys

    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close(fig)


def img(png: bytes, alt: str, caption: str | None = None, width: int | None = None) -> str:
    """PNG bytes as an inline ``<img src="data:image/png;base64,...">`` in a ``<figure>``; ``caption``
    is plain text (escaped: captions name dataset folders and families, which a user's data names)."""
    data = base64.b64encode(png).decode("ascii")
    w = f' width="{width}"' if width else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}"{w} src="data:image/png;base64,{data}">{cap}</figure>'


def figure(fig, alt: str, caption: str | None = None) -> str:
    return img(png_bytes(fig), alt, caption)


def png_file(path: Path, alt: str, caption: str | None = None) -> str | None:
    """A PNG already on disk (the ensemble's plots), or None when it is not there."""
    path = Path(path)
    return img(path.read_bytes(), alt, caption) if path.is_file() else None


def section(s: Section) -> str:
    return f'<section id="{esc(s.id)}">\n<h2>{esc(s.title)}</h2>\n{s.body}\n</section>'


def page(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole document: a title, a table of contents, the sections in order."""
    nav = " ".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(section(s) for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
            f"<h1>{esc(title)}</h1>\n<p class=\"small\">{subtitle}</p>\n<nav>{nav}</nav>\n{body}\n</body></html>\n")
