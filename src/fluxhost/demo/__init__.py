"""The demo model: a small FLUX.1 pipeline (the same diffusers classes as real FLUX) trained by
:mod:`fluxhost.demo.train` on procedurally drawn scenes of flat shapes, shipped in the package and
served when no real weights are configured. It draws what its captions say, offline, on a CPU."""

from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path

from fluxhost.settings import ModelSettings

WEIGHTS = Path(__file__).parent / "weights"
"""The trained pipeline folder; its ``upscaler`` subfolder holds the Swin2SR that brings pictures
from the trained size to the requested one."""

DEMO_LABEL = "fluxhost demo model (flat shapes in eight colours: configure real FLUX weights for other pictures)"

RENDER_PIXELS = 128 * 128
"""About the size the model was trained at: it draws there and is upscaled."""

RENDER_MIN_SIDE = 112
"""Its shapes are sized by the picture's shorter side and come out round-cornered when that side is
under 112 pixels (as in 16:9 at 128x128 pixels: 176x96): wide and tall pictures draw larger, with
the shorter side at 112 (measured with ``bench/demo_quality.py``)."""

STEPS = 20  # measured: more steps than 8 draw colour and place better; 20 stay under a second a picture
GUIDANCE = 3.0  # true classifier-free guidance (the model learned empty captions too): shapes come out firmer
MAX_SEQUENCE_LENGTH = 24  # tokens of the longest caption, with room to spare

EXAMPLE_PROMPT = "a red circle on the left on a blue background"

CAN_DRAW = (f"The demo model draws one or two flat shapes (circle, square, triangle) in red, green, blue, yellow, "
            f"white, black, purple or orange, on the left, on the right, at the top, at the bottom or in the "
            f"center, on a plain background of one of those colours: e.g. \"{EXAMPLE_PROMPT}\". The background, the "
            f"shape, its colour and its place come out as asked; a square or triangle sometimes has "
            f"rounded corners (one in ten in the widest pictures), and with two shapes half or more "
            f"of the pictures get one of them wrong. "
            f"Anything else comes out as some such scene.")


TOOL_DESCRIPTION = (f"Served on this server by the fluxhost demo model: one or two flat shapes (circle, square, "
                    f"triangle) in eight colours, in five places, on a plain background, e.g. \"{EXAMPLE_PROMPT}\"; "
                    "anything else comes out as such a scene. Configure real FLUX weights for other pictures.")
"""What Tool/List and Tool/Detail say of a drawing tool while the demo model serves it."""


EDITOR = WEIGHTS / "editor"
"""The editing transformer (FLUX.1 Kontext's way: the picture to edit beside the one being drawn),
served on the drawing model's text encoders, VAE and upscaler, from noise that carries the picture
to edit (``noise_mean=positions-and-reference``). The package ships one; where a folder has none,
editing tools are refused offline."""

EDIT_GUIDANCE = 1.0
"""No classifier-free guidance: steering away from the empty instruction (which the editor learned
as "change nothing") at 2.0 made the asked change in 0.75 of held-out edits and kept the rest in
0.45, against 0.88 and 0.70 without (``bench/demo_quality.py --edits``)."""

EDIT_EXAMPLE = "make the circle blue"

CAN_EDIT = ("The demo editing model edits the demo's pictures (one or two flat shapes on a plain background) by "
            "one instruction at a time: recolour a shape (\"make the circle blue\"), move it (\"move the square "
            "to the left\"), change the background (\"make the background green\"), add a shape (\"add a yellow "
            "triangle at the top\") or remove one (\"remove the circle\"); a scene with two shapes alike names "
            "one by colour and shape (\"make the red circle blue\").")

EDIT_DESCRIPTION = (f"Served on this server by the fluxhost demo editing model: it edits pictures of flat shapes "
                    f"by one instruction (recolour, move, add or remove a shape, change the background), e.g. "
                    f"\"{EDIT_EXAMPLE}\". Configure FLUX.1 Kontext weights for other pictures.")
"""What Tool/List and Tool/Detail say of an editing tool while the demo editing model serves it."""


def demo_model_settings(**overrides: object) -> ModelSettings:
    """The settings the demo model is served with (``overrides`` on top)."""
    values: dict[str, object] = dict(
        weights=str(WEIGHTS), upscaler=str(WEIGHTS / "upscaler"), render_pixels=RENDER_PIXELS,
        render_min_side=RENDER_MIN_SIDE, steps=STEPS,
        max_sequence_length=MAX_SEQUENCE_LENGTH, noise_mean="positions", guidance=GUIDANCE, negative_prompt="",
        lowercase_prompts=True, prompt_words_only=True, example_prompt=EXAMPLE_PROMPT, description=TOOL_DESCRIPTION,
    )
    return ModelSettings(**{**values, **overrides})


def demo_editor_settings(**overrides: object) -> ModelSettings:
    """The settings the demo editing model is served with (``overrides`` on top)."""
    values: dict[str, object] = dict(transformer=str(EDITOR), kontext=True, noise_mean="positions-and-reference",
                                     guidance=EDIT_GUIDANCE,
                                     example_prompt=EDIT_EXAMPLE, description=EDIT_DESCRIPTION)
    return demo_model_settings(**{**values, **overrides})


def or_demo(model: ModelSettings) -> ModelSettings:
    """``model`` itself when it names weights; else the demo model (its editing model for an
    editing tool, where the demo's folder has one), with what ``model`` sets explicitly (a drawing
    or editing tool's description aside: it says what the demo does)."""
    if model.weights:
        return model
    chosen = model.model_dump(exclude_unset=True, exclude={"weights"})
    if model.kind in ("text-to-image", "edit"):  # the demo's own description, not the hosted model's claims
        chosen.pop("description", None)
    settings = demo_editor_settings if model.kind == "edit" and EDITOR.is_dir() else demo_model_settings
    return settings(**chosen, setting=model.setting)


def serves_demo(model: ModelSettings) -> bool:
    return model.weights in (None, str(WEIGHTS))


@functools.cache
def _vocabulary(editing: bool) -> frozenset[str]:
    """Every word of the demo's captions (and, ``editing``, of its instructions), built once: each
    task's prompt is checked against it."""
    from fluxhost.demo.edits import VERBS
    from fluxhost.demo.scenes import words

    return frozenset(words()) | (frozenset(VERBS) if editing else frozenset())


def unknown_words(prompt: str, editing: bool = False) -> list[str]:
    """The words of ``prompt`` the demo model (its editing model where ``editing``) never read, case
    aside, in order, once each."""
    known = _vocabulary(editing)
    words = re.findall(r"\w+", unicodedata.normalize("NFC", prompt).lower())  # as the model reads it: words alone
    return list(dict.fromkeys(word for word in words if word not in known))


def vocabulary_notice(unknown: list[str], editing: bool = False) -> str:
    """What the demo model (its editing model where ``editing``) tells a prompt with words it does not know."""
    shown = ", ".join(f'"{word}"' for word in unknown[:8]) + (", ..." if len(unknown) > 8 else "")
    if editing:
        return (f"Note: the demo editing model does not know {shown}: it takes one instruction of a few kinds, "
                f'like "{EDIT_EXAMPLE}", "move the square to the left", "make the background green", "add a yellow '
                'triangle at the top" or "remove the circle". Configure FLUX.1 Kontext weights for anything else.')
    return (f"Note: the demo model does not know {shown}: it draws flat shapes only, so this picture is some "
            f'scene of them. It knows prompts like "{EXAMPLE_PROMPT}" (shapes: circle, square, triangle; eight '
            "colours; left, right, top, bottom, center). Configure real FLUX weights for anything else.")
