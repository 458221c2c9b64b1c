"""Rendered text pages: deterministic synthetic documents (dark text on a light page)."""

import numpy as np

from slimcc.models.text_pages import text_page, text_pages


def test_pages_are_deterministic_and_differ_by_seed():
    first, again = text_page(3), text_page(3)
    assert np.array_equal(first, again)
    other = text_page(4)
    assert first.shape != other.shape or not np.array_equal(first, other)
    assert [p.shape for p in text_pages(2, seed=1)] == [text_page(1000).shape, text_page(1001).shape]


def test_a_page_is_dark_lines_on_a_light_background():
    page = text_page(0)
    assert page.dtype == np.uint8 and page.ndim == 3 and page.shape[2] == 3
    assert 600 <= page.shape[1] < 900 and 800 <= page.shape[0] < 1200
    assert np.array_equal(page[:, :, 0], page[:, :, 2])
    gray = page[:, :, 0].astype(np.float32)
    assert np.median(gray) > 200 and (gray < 100).mean() > 0.01  # mostly paper, some ink
    ink_rows = (gray < 100).any(axis=1)
    # text comes in lines: ink rows alternate with blank rows many times down the page
    assert np.count_nonzero(np.diff(ink_rows.astype(np.int8)) == 1) >= 20
