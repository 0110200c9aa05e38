"""Classifier backends and how a tolerance turns their scores into a verdict.

A classifier gives a score per label; the labels that mean unsafe are a setting. A label is
flagged when its score reaches the threshold of the task's tolerance: 0 flags at 0.30, each level
up asks for more confidence, 5 flags only at 0.95, and 6 turns the check off.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from typing import Protocol

from PIL.Image import Image

THRESHOLDS = (0.30, 0.45, 0.60, 0.75, 0.85, 0.95)  # by tolerance 0..5
OFF = 6


def flagged(scores: dict[str, float], unsafe_labels: Collection[str], tolerance: int) -> str | None:
    """The unsafe label with the highest score at or above the tolerance's threshold, if any."""
    if tolerance >= OFF:
        return None
    threshold = THRESHOLDS[tolerance]
    unsafe = {label.lower() for label in unsafe_labels}
    hits = [(score, label) for label, score in scores.items() if label.lower() in unsafe and score >= threshold]
    return max(hits)[1].lower() if hits else None


class TextScorer(Protocol):
    def scores(self, text: str) -> dict[str, float]: ...


class ImageScorer(Protocol):
    def scores(self, image: Image) -> dict[str, float]: ...


class TransformersClassifier:
    """A transformers classification pipeline (folder or hub id) on the CPU, every label scored."""

    task = ""

    def __init__(self, model: str):
        from transformers import pipeline

        self.name = model
        self._pipeline = pipeline(self.task, model=model, top_k=None, device="cpu")
        self._lock = threading.Lock()

    def scores(self, item) -> dict[str, float]:
        with self._lock:
            results = self._classify(item)
        return {result["label"]: float(result["score"]) for result in results}

    def _classify(self, item) -> list[dict]:
        raise NotImplementedError


class TransformersText(TransformersClassifier):
    task = "text-classification"

    def _classify(self, text: str) -> list[dict]:
        return self._pipeline([text], truncation=True)[0]


class TransformersImage(TransformersClassifier):
    task = "image-classification"

    def _classify(self, image: Image) -> list[dict]:
        return self._pipeline(image.convert("RGB"))


class NudeNet:
    """NudeNet's detector (``pip install nudenet``: AGPL-3.0, so never a dependency of ours): each
    detected class scored by its most confident box."""

    name = "NudeNet"

    def __init__(self) -> None:
        try:
            from nudenet import NudeDetector
        except ImportError as error:
            raise RuntimeError("the nudenet image backend needs `pip install nudenet` (AGPL-3.0)") from error
        self._detector = NudeDetector()
        self._lock = threading.Lock()

    def scores(self, image: Image) -> dict[str, float]:
        import numpy as np

        rgb = np.asarray(image.convert("RGB"))[:, :, ::-1]  # the detector reads BGR arrays, as OpenCV does
        with self._lock:
            detections = self._detector.detect(np.ascontiguousarray(rgb))
        scores: dict[str, float] = {}
        for detection in detections:
            scores[detection["class"]] = max(scores.get(detection["class"], 0.0), float(detection["score"]))
        return scores
