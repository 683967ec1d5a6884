"""The one palette rule: which colour each class gets, everywhere (predict, serve, plots, datasets).

``class_colours(palette, n)`` is the model's (or dataset's) own palette when it gives at least ``n``
colours, else PASCAL VOC's bit-interleaved colour map for ``n`` classes: deterministic, distinct for
every class id 0..255, and the colours VOC-trained models already use. So the same model looks the
same in `fcnseg predict`, `fcnseg serve` and the run's sample strips.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Colour = tuple[int, int, int]


def voc_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map, (n, 3) uint8: the bits of the label index are spread over the
    high bits of R, G and B (bit 0 -> R, bit 1 -> G, bit 2 -> B, then the next three bits ...)."""
    index = np.arange(n)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (index >> (3 * shift + channel)) & 1
            cmap[:, channel] |= bit << (7 - shift)
    return cmap.astype(np.uint8)


def class_colours(palette: Sequence[Sequence[int]] | None, n: int) -> list[Colour]:
    """``n`` colours: the first ``n`` of ``palette`` when it has that many, else VOC's colour map."""
    source = palette if palette is not None and len(palette) >= n else voc_colormap(n)
    return [tuple(int(v) for v in colour[:3]) for colour in list(source)[:n]]
