"""Starting noise whose mean marks where each latent sits: half the channels ramp from -1 at the
left edge to 1 at the right, the other half from the top edge to the bottom.

FLUX's transformer knows a token's position only through rotary embeddings, relative to the text
(at the origin) and to other tokens, so a small model trained briefly cannot tell where a
picture's edges are and draws "on the right" in the same columns at every aspect ratio. A model
trained to flow from this noise instead of plain Gaussian noise (the demo model) reads each
token's place in the picture from its input at every step. Models trained from plain noise (real
FLUX) start from plain noise.
"""

from __future__ import annotations

import torch


def position_ramps(count: int, channels: int, rows: int, columns: int) -> torch.Tensor:
    """(count, channels, rows, columns): channels [0, channels/2) ramp left to right, the rest top to bottom."""
    across = torch.linspace(-1, 1, columns).view(1, 1, 1, columns).expand(count, channels // 2, rows, columns)
    down = torch.linspace(-1, 1, rows).view(1, 1, rows, 1).expand(count, channels - channels // 2, rows, columns)
    return torch.cat([across, down], dim=1)
