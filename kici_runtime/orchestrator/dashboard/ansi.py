"""Terminal colours of log lines, turned into styled text segments that can only ever render as text.

:func:`segments` parses the SGR escape sequences (``ESC [ ... m``) of one log line into ``(classes, text)``
pairs: ``classes`` is built only from this module's fixed vocabulary (``fg0``..``fg15``, ``bg0``..``bg15``,
``b``, ``d``, ``i``, ``u``), never from the input, and ``text`` is plain text the templates escape (or the
browser script sets as ``textContent``). Every other escape sequence (cursor moves, OSC titles and
hyperlinks, ...) and control character is dropped, and a carriage return keeps what a terminal would show
(the text after the last one). 256-colour and true-colour codes are mapped to the nearest of the 16 colours
the stylesheet themes for light and dark.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

__all__ = ["Segment", "plain", "segments"]

Segment = tuple[str, str]
"""``(classes, text)``; ``classes`` is space-separated and may be empty."""

# CSI (ESC [ params intermediates final), OSC (ESC ] ... BEL or ESC \), other two-byte escapes.
_ESCAPE = re.compile(r"\x1b(?:\[([0-?]*)[ -/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")
MAX_LINE = 20_000  # characters shown of one line; the raw download keeps everything

# xterm's 16 colours as RGB, to map 256-colour and true-colour codes onto the themed palette.
_PALETTE = (
    (0, 0, 0),
    (205, 0, 0),
    (0, 205, 0),
    (205, 205, 0),
    (0, 0, 238),
    (205, 0, 205),
    (0, 205, 205),
    (229, 229, 229),
    (127, 127, 127),
    (255, 0, 0),
    (0, 255, 0),
    (255, 255, 0),
    (92, 92, 255),
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 255),
)


@dataclass(frozen=True, slots=True)
class _Style:
    fg: int | None = None
    bg: int | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False

    def classes(self) -> str:
        out = []
        if self.fg is not None:
            out.append(f"fg{self.fg}")
        if self.bg is not None:
            out.append(f"bg{self.bg}")
        out += [
            name for name, on in (("b", self.bold), ("d", self.dim), ("i", self.italic), ("u", self.underline)) if on
        ]
        return " ".join(out)


def _nearest(r: int, g: int, b: int) -> int:
    return min(range(16), key=lambda i: sum((x - y) ** 2 for x, y in zip(_PALETTE[i], (r, g, b), strict=True)))


def _indexed(n: int) -> int | None:
    """A 256-colour index as one of the 16."""
    if not 0 <= n <= 255:
        return None
    if n < 16:
        return n
    if n >= 232:
        level = 8 + (n - 232) * 10
        return _nearest(level, level, level)
    n -= 16
    steps = (0, 95, 135, 175, 215, 255)
    return _nearest(steps[n // 36], steps[(n // 6) % 6], steps[n % 6])


def _extended(codes: list[int], i: int) -> tuple[int | None, int]:
    """The colour of a ``38;5;n`` / ``38;2;r;g;b`` tail starting at ``codes[i]``; and how many codes it used."""
    if i < len(codes) and codes[i] == 5 and i + 1 < len(codes):
        return _indexed(codes[i + 1]), 2
    if i < len(codes) and codes[i] == 2 and i + 3 < len(codes):
        r, g, b = (max(0, min(255, c)) for c in codes[i + 1 : i + 4])
        return _nearest(r, g, b), 4
    return None, len(codes) - i


def _apply(style: _Style, params: str) -> _Style:
    try:
        codes = [int(p) if p else 0 for p in params.replace(":", ";").split(";")] if params else [0]
    except ValueError:
        return style
    i = 0
    while i < len(codes):
        c = codes[i]
        i += 1
        if c == 0:
            style = _Style()
        elif c == 1:
            style = replace(style, bold=True)
        elif c == 2:
            style = replace(style, dim=True)
        elif c == 3:
            style = replace(style, italic=True)
        elif c == 4:
            style = replace(style, underline=True)
        elif c == 22:
            style = replace(style, bold=False, dim=False)
        elif c == 23:
            style = replace(style, italic=False)
        elif c == 24:
            style = replace(style, underline=False)
        elif 30 <= c <= 37:
            style = replace(style, fg=c - 30)
        elif 90 <= c <= 97:
            style = replace(style, fg=c - 90 + 8)
        elif 40 <= c <= 47:
            style = replace(style, bg=c - 40)
        elif 100 <= c <= 107:
            style = replace(style, bg=c - 100 + 8)
        elif c == 39:
            style = replace(style, fg=None)
        elif c == 49:
            style = replace(style, bg=None)
        elif c in (38, 48):
            colour, used = _extended(codes, i)
            i += used
            style = replace(style, fg=colour) if c == 38 else replace(style, bg=colour)
    return style


def segments(line: str) -> list[Segment]:
    """The styled segments of one log line (see the module docstring). An empty line gives ``[]``."""
    if len(line) > MAX_LINE:
        line = line[:MAX_LINE] + " …"
    if "\r" in line:
        line = line.rstrip("\r").rsplit("\r", 1)[-1]
    out: list[Segment] = []

    def add(classes: str, text: str) -> None:
        text = _CONTROL.sub("", text)
        if not text:
            return
        if out and out[-1][0] == classes:  # adjacent text of one style is one segment
            out[-1] = (classes, out[-1][1] + text)
        else:
            out.append((classes, text))

    style = _Style()
    pos = 0
    for m in _ESCAPE.finditer(line):
        add(style.classes(), line[pos : m.start()])
        if m.group(2) == "m":
            style = _apply(style, m.group(1) or "")
        pos = m.end()
    add(style.classes(), line[pos:])
    return out


def plain(line: str) -> str:
    """The line's text without any escape sequence or control character."""
    return "".join(text for _, text in segments(line))
