"""The moderator a worker asks before generating (the prompt) and before storing (each image)."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL.Image import Image

from fluxhost.safety.classifiers import (
    OFF,
    ImageScorer,
    NudeNet,
    TextScorer,
    TransformersImage,
    TransformersText,
    flagged,
)
from fluxhost.safety.terms import SHIPPED, TermLists

log = logging.getLogger(__name__)


class ModerationUnavailable(RuntimeError):
    """A configured classifier could not be loaded: its checks fail closed."""


class Moderator:
    def __init__(self, terms_dir: Path | None = None, *, text_model: str | None = None,
                 image_model: str | None = None, image_backend: str = "transformers",
                 unsafe_labels: frozenset[str] = frozenset()):
        self.terms = TermLists(terms_dir or SHIPPED)
        self.text_model = text_model
        self.image_model = image_model
        self.image_backend = image_backend
        self.unsafe_labels = unsafe_labels
        self.text: TextScorer | None = None
        self.image: ImageScorer | None = None
        self._problems: dict[str, str] = {}

    @property
    def checks_images(self) -> bool:
        return bool(self.image_model) or self.image_backend == "nudenet"

    def load(self) -> None:
        """Load the configured classifiers; one that fails is reported by every check that needs it."""
        if self.text_model:
            try:
                self.text = TransformersText(self.text_model)
            except Exception as error:
                self._problems["prompt"] = f"the prompt classifier {self.text_model!r} could not be loaded: {error}"
        if self.checks_images:
            try:
                self.image = NudeNet() if self.image_backend == "nudenet" else TransformersImage(self.image_model)
            except Exception as error:
                self._problems["image"] = f"the image classifier could not be loaded: {error}"
        for problem in self._problems.values():
            log.error("moderation: %s; tasks that need it fail until it is fixed", problem)

    def check_prompt(self, prompt: str, tolerance: int) -> str | None:
        """The category ``prompt`` is refused for at ``tolerance``, or None."""
        if tolerance >= OFF:
            return None
        category = self.terms.check(prompt, tolerance)
        if category or not self.text_model:
            return category
        if self.text is None:
            raise ModerationUnavailable(self._problems.get("prompt", "the prompt classifier is not loaded"))
        return flagged(self.text.scores(prompt), self.unsafe_labels, tolerance)

    def check_image(self, image: Image, tolerance: int) -> str | None:
        """The label ``image`` is refused for at ``tolerance``, or None."""
        if tolerance >= OFF or not self.checks_images:
            return None
        if self.image is None:
            raise ModerationUnavailable(self._problems.get("image", "the image classifier is not loaded"))
        return flagged(self.image.scores(image), self.unsafe_labels, tolerance)

    def describe(self) -> str:
        """What runs on this server, for Tool/Detail."""
        prompt = f"term lists ({', '.join(self.terms.categories)})"
        if self.text_model:
            prompt += f" and the classifier {self.text_model}"
        image = ("NudeNet" if self.image_backend == "nudenet" else self.image_model) if self.checks_images else "off"
        return (f"On this server, prompts are checked with {prompt}; images with: {image}. Lower levels refuse "
                "more: a term list entry applies below its level, a classifier flags at a confidence of 0.30 at "
                "0 up to 0.95 at 5; 6 turns moderation off.")
