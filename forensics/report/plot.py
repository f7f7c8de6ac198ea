"""matplotlib figures as inline SVG for the HTML report: no scripts, no external references, tooltips.

    with Plot("heatmap", "recovery of single interventions", 6.0, 3.0) as plot:
        ax = plot.fig.subplots()
        ax.add_patch(Rectangle((0, 0), 1, 1, gid=plot.mark(0, css="cell fixed", tip="model.layers.1.mlp zero")))
        svg = plot.svg()

matplotlib is imported lazily and only its object API is used (``Figure`` + the SVG canvas: no pyplot,
no global backend, nothing shown). Text stays text (``svg.fonttype: none``), so labels are searchable
and small; ``$`` in user text is not math (``text.parse_math: False``); ids are salted per plot so
two plots on one page never share one and a re-render is byte-identical.
"""

from __future__ import annotations

import io
import math
import re
import xml.etree.ElementTree as ET
from contextlib import ExitStack
from html import escape
from typing import Any

__all__ = ["FIXED_COLOUR", "NOT_EVALUATED_COLOUR", "RECOVERY_RANGE", "Plot", "esc", "fmt", "recovery_colour"]

RECOVERY_RANGE = (-1.0, 1.0)  # colour scales are clipped here; exact values stay in the tooltips
FIXED_COLOUR = "#1a9850"  # only ever drawn for an intervention that fixed the failure on its own
NOT_EVALUATED_COLOUR = "#e4e6ea"
_NEG, _MID, _POS = (214, 96, 77), (247, 247, 247), (103, 169, 207)  # RdBu's middle: no deep blue anywhere
_SVG_NS, _XLINK_NS = "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"
_RC = {
    "svg.fonttype": "none",
    "text.parse_math": False,
    "font.size": 9,
    "font.family": "sans-serif",
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def esc(value: Any) -> str:
    """HTML/SVG-escape anything (quotes too: values also land in attributes)."""
    return escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for people: fixed digits, '—' for missing or non-finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—" if value is None else str(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else "—"


def recovery_colour(value: float | None) -> str:
    """Diverging colour around 0, clipped to RECOVERY_RANGE: red for harm, a medium blue at most for
    recovery. The deepest blue is not on the scale: a fix is FIXED_COLOUR, never a shade of blue."""
    lo, hi = RECOVERY_RANGE
    v = min(hi, max(lo, value)) if value is not None and math.isfinite(value) else 0.0
    end, t = (_NEG, v / lo) if v < 0 else (_POS, v / hi)
    r, g, b = (round(m + (e - m) * t) for m, e in zip(_MID, end, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


class Plot:
    """One matplotlib figure rendered to inline SVG, with rcParams of its own while it is drawn."""

    def __init__(self, salt: str, label: str, width: float, height: float) -> None:
        self.salt, self.label, self.size = salt, label, (width, height)
        self.marks: dict[str, tuple[str, str]] = {}  # gid -> (css class, tooltip)
        self._stack = ExitStack()
        self.fig: Any = None

    def __enter__(self) -> Plot:
        import matplotlib
        from matplotlib.backends.backend_svg import FigureCanvasSVG
        from matplotlib.figure import Figure

        rc: Any = {**_RC, "svg.hashsalt": self.salt}  # untyped keys: matplotlib's stubs list every rcParam
        self._stack.enter_context(matplotlib.rc_context(rc))
        self.fig = Figure(figsize=self.size, dpi=72)  # never registered with pyplot: nothing global, nothing shown
        FigureCanvasSVG(self.fig)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def mark(self, key: Any, *, css: str, tip: str) -> str:
        """A gid for an artist: in the SVG its group gets ``class=css`` and a ``<title>`` tooltip."""
        gid = f"{self.salt}-{key}"
        self.marks[gid] = (css, tip)
        return gid

    def svg(self) -> str:
        """The figure as an ``<svg>`` element for an HTML page: marked groups get their class and
        tooltip; other group ids, metadata, the global stylesheet and namespace declarations go."""
        buf = io.StringIO()
        self.fig.savefig(
            buf,
            format="svg",
            bbox_inches="tight",
            pad_inches=0.05,
            metadata={"Creator": None, "Date": None, "Format": None, "Type": None},
        )
        ET.register_namespace("", _SVG_NS)
        ET.register_namespace("xlink", _XLINK_NS)
        root = ET.fromstring(buf.getvalue())  # matplotlib's own output; user text in it is escaped
        for parent in root.iter():
            for child in list(parent):
                if child.tag in (f"{{{_SVG_NS}}}metadata", f"{{{_SVG_NS}}}style"):
                    parent.remove(child)
        for el in root.iter(f"{{{_SVG_NS}}}g"):
            gid = el.get("id")
            if gid in self.marks:
                el.set("class", self.marks[gid][0])
                title = ET.Element(f"{{{_SVG_NS}}}title")
                title.text = self.marks[gid][1]
                el.insert(0, title)
            elif gid is not None:
                del el.attrib["id"]
        root.attrib.update({"class": "plot", "role": "img", "aria-label": self.label})
        text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", ET.tostring(root, encoding="unicode"))
        return text.replace("xlink:href=", "href=")
