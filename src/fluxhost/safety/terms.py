"""Prompt term lists: one file per category (``<category>.txt``), lines ``LEVEL TERM``; a term is
refused when the tolerance is below its level. Files are read again when they change (within a
second), so an operator edits them without a restart."""

from __future__ import annotations

import math
import re
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

SHIPPED = Path(__file__).parent / "terms"


@dataclass(frozen=True)
class Term:
    category: str
    level: int
    pattern: re.Pattern[str]


def normalise(text: str) -> str:
    """Lower case, compatibility forms folded (full-width letters, ligatures), accents dropped."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    return "".join(char for char in folded if not unicodedata.combining(char)).lower()


def compile_term(term: str) -> re.Pattern[str]:
    """Whole words, with any run of spaces or punctuation between them ("self harm", "self-harm")."""
    words = normalise(term).split()
    return re.compile(r"(?<![a-z0-9])" + r"[\W_]+".join(re.escape(word) for word in words) + r"(?![a-z0-9])")


def parse(category: str, text: str) -> list[Term]:
    terms = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        level, _, term = line.partition(" ")
        if not level.isdigit() or not term.strip() or not 1 <= int(level) <= 6:
            raise ValueError(f"{category}.txt line {number}: expected 'LEVEL TERM' with LEVEL 1 to 6, got {line!r}")
        terms.append(Term(category, int(level), compile_term(term)))
    return terms


class TermLists:
    """The term files of a folder, reloaded when a file is added, removed or changed: the folder
    is looked at again at most every ``recheck_seconds`` (a listing and a stat per file, not to
    be paid at every prompt of a busy worker)."""

    def __init__(self, folder: Path = SHIPPED, recheck_seconds: float = 1.0):
        self.folder = folder
        self.recheck_seconds = recheck_seconds
        self._stamp: tuple[tuple[str, int, int], ...] | None = None
        self._checked_at = -math.inf  # time.monotonic() of the last look at the folder
        self._terms: list[Term] = []
        self._lock = threading.Lock()

    @property
    def categories(self) -> list[str]:
        return sorted({term.category for term in self._current()})

    def _current(self) -> list[Term]:
        if time.monotonic() - self._checked_at < self.recheck_seconds:
            return self._terms
        files = sorted(self.folder.glob("*.txt"))
        stamp = tuple((f.name, info.st_mtime_ns, info.st_size) for f in files for info in (f.stat(),))
        with self._lock:
            if stamp != self._stamp:
                self._terms = [term for f in files for term in parse(f.stem, f.read_text(encoding="utf-8"))]
                self._stamp = stamp
            self._checked_at = time.monotonic()
            return self._terms

    def check(self, prompt: str, tolerance: int) -> str | None:
        """The category of the first term refused at ``tolerance`` found in ``prompt``."""
        text = normalise(prompt)
        for term in self._current():
            if tolerance < term.level and term.pattern.search(text):
                return term.category
        return None
