"""Contact-sheet headers stay readable whatever the method names: no label runs into the next column."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ImageFont

from pipeline.images import labelled_grid, wrap_text

LONG = ["source", "age editor_preserve l1000-e30-i10-x100 s6", "gender editor_preserve l1000-e30-x100 s6",
        "hair_lightness editor_preserve l1000-e30-i10-x100 s6", "averyveryverylongmethodnamewithoutanybreaks"]  # fmt: skip


@pytest.mark.parametrize("width", [40, 126, 300])
def test_wrapped_lines_fit_and_keep_every_character(width: int) -> None:
    font = ImageFont.load_default()
    for label in LONG:
        lines = wrap_text(label, width, font)
        assert all(font.getlength(line) <= width for line in lines)
        assert "".join(lines).replace(" ", "") == label.replace(" ", "")


def test_headers_and_captions_never_cross_into_the_next_column() -> None:
    scale, gap, size = 2, 2, 64
    cells = [[np.full((size, size, 3), 255, np.uint8)] * len(LONG)] * 2  # white faces: only text is dark
    grid = labelled_grid(cells, LONG, captions=[["happy kept " * 3] * len(LONG)] * 2, scale=scale, gap=gap)
    cell = size * scale + gap
    dark = grid.min(axis=2) < 128
    for boundary in range(1, len(LONG)):
        x = boundary * cell  # the last pixel column of a cell and the gap before the next one's text
        assert not dark[:, x - 1 : x + 2].any(), f"text crosses into column {boundary}"
    header_rows = np.flatnonzero(dark[:, : cell * len(LONG)].any(axis=1))
    assert header_rows.min() < 12  # labels are drawn
