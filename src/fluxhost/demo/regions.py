"""Connected regions of a picture's pixel mask, with numpy alone: the object of a picture in the
demo's flat style is the largest region of pixels far from its background, and its holes are what
that region encloses."""

from __future__ import annotations

import numpy as np

FAR_FROM_BACKGROUND = 60.0
"""RGB distance beyond which a pixel is not background (the demo's colours are 95 or more apart)."""


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected labels of ``mask`` (0 outside it, 1... for its regions), and how many regions
    there are. Each pixel takes the smallest index among its neighbours' labels, and then its
    label's own label (pointer jumping), until nothing changes: a few dozen array passes."""
    height, width = mask.shape
    flat = mask.ravel()
    labels = np.where(flat, np.arange(flat.size), flat.size)
    neighbours = [(np.arange(flat.size) - 1, np.tile(np.arange(width) > 0, height)),
                  (np.arange(flat.size) + 1, np.tile(np.arange(width) < width - 1, height)),
                  (np.arange(flat.size) - width, np.arange(flat.size) >= width),
                  (np.arange(flat.size) + width, np.arange(flat.size) < flat.size - width)]
    neighbours = [(np.where(valid, index, 0), valid & flat) for index, valid in neighbours]
    while True:
        lowest = labels.copy()
        for index, valid in neighbours:
            lowest = np.where(valid & flat[index], np.minimum(lowest, labels[index]), lowest)
        inside = lowest < flat.size
        lowest[inside] = lowest[lowest[inside]]
        if np.array_equal(lowest, labels):
            break
        labels = lowest
    roots, numbered = np.unique(labels, return_inverse=True)  # the outside's label, if any, sorts last
    numbered = np.where(flat, numbered + 1, 0)
    return numbered.reshape(height, width).astype(np.int32), int((roots < flat.size).sum())


def enclosed(region: np.ndarray) -> np.ndarray:
    """The pixels outside ``region`` that cannot reach the picture's border without crossing it: its holes."""
    labels, _ = components(~region)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return (labels > 0) & ~np.isin(labels, border)


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest connected region of ``mask`` (all False when it has none)."""
    labels, count = components(mask)
    if not count:
        return np.zeros_like(mask)
    return labels == int(np.bincount(labels.ravel())[1:].argmax()) + 1
