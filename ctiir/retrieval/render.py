"""Result pictures: the reference with its text and weights, then the ranked results with rank, score and id.

``render_grid`` draws one row per query, so the same function makes ``ctiir search --out`` (one row) and the
evaluation's best/worst query grids (many rows). The target, when known, is framed in green; a target that
is not among the shown results is said so in red under the reference.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont, ImageOps

GREEN = (20, 160, 60)
RED = (200, 30, 30)
GREY = (200, 200, 200)
INK = (20, 20, 20)
MUTED = (90, 90, 90)
REFERENCE = (40, 90, 200)


@dataclass
class Candidate:
    """One ranked gallery item of a row (``image`` ``None`` draws a placeholder)."""

    id: str
    score: float
    rank: int
    image: Image.Image | None = None


@dataclass
class GridRow:
    """One query: its reference image and text, the fusion's weights, its ranked results and its target."""

    reference: Image.Image | None
    text: str | None
    candidates: Sequence[Candidate] = field(default_factory=list)
    weights: tuple[float, float] | None = None
    target: str | None = None
    title: str | None = None


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _fit(image: Image.Image | None, size: int) -> Image.Image:
    canvas = Image.new("RGB", (size, size), (240, 240, 240))
    if image is None:
        ImageDraw.Draw(canvas).text((size // 2, size // 2), "no image", fill=MUTED, anchor="mm", font=_font(12))
        return canvas
    thumb = ImageOps.contain(image.convert("RGB"), (size, size))
    canvas.paste(thumb, ((size - thumb.width) // 2, (size - thumb.height) // 2))
    return canvas


def _elide(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength("…" + text) > width:
        text = text[1:]
    return "…" + text  # keep the end of a path: the file name


def render_grid(rows: Sequence[GridRow], thumb: int = 160, pad: int = 8) -> Image.Image:
    """One picture of ``rows``: per row the reference cell, then one cell per candidate."""
    if not rows:
        raise ValueError("render_grid needs at least one row")
    font, small = _font(13), _font(11)
    line = 16
    text_lines = 5
    cell_w, cell_h = thumb + 2 * pad, thumb + 2 * pad + text_lines * line
    columns = 1 + max(len(r.candidates) for r in rows)
    title_h = line + pad if any(r.title for r in rows) else 0
    row_h = cell_h + title_h
    canvas = Image.new("RGB", (columns * cell_w + pad, len(rows) * row_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        top = pad + r * row_h
        if row.title:
            draw.text((pad, top), row.title, fill=INK, font=font)
            top += title_h
        # the reference cell: image, text (wrapped), weights, and the target's fate
        x = pad
        canvas.paste(_fit(row.reference, thumb), (x, top))
        draw.rectangle([x - 2, top - 2, x + thumb + 1, top + thumb + 1], outline=REFERENCE, width=2)
        y = top + thumb + 4
        chars = max(8, thumb // 6)
        lines = textwrap.wrap(f'"{row.text}"', chars) if row.text else ["(image only)"]
        lines = lines[:3]
        if row.reference is None and row.text:
            lines = [*lines[:2], "(text only)"]
        for text in lines:
            draw.text((x, y), text, fill=INK, font=small)
            y += line - 2
        if row.weights is not None:
            draw.text((x, y), f"w_img {row.weights[0]:.2f}  w_txt {row.weights[1]:.2f}", fill=MUTED, font=small)
            y += line - 2
        ids = [c.id for c in row.candidates]
        if row.target is not None and row.target not in ids:
            draw.text((x, y), _elide(f"target not in top {len(ids)}", small, thumb), fill=RED, font=small)
        # the ranked results
        for c, cand in enumerate(row.candidates):
            x = pad + (c + 1) * cell_w
            canvas.paste(_fit(cand.image, thumb), (x, top))
            is_target = row.target is not None and cand.id == row.target
            if is_target:
                draw.rectangle([x - 4, top - 4, x + thumb + 3, top + thumb + 3], outline=GREEN, width=5)
            else:
                draw.rectangle([x - 1, top - 1, x + thumb, top + thumb], outline=GREY, width=1)
            draw.text((x, top + thumb + 4), f"#{cand.rank}  {cand.score:.3f}", fill=GREEN if is_target else INK, font=font)
            draw.text((x, top + thumb + 4 + line), _elide(cand.id, small, thumb), fill=MUTED, font=small)
    return canvas
