"""Moderation: term lists by tolerance (reloaded when edited), classifier thresholds, tiny
classifiers through the real loading code, and what a client sees when a prompt or an image is
refused."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fluxhost.safety.classifiers import flagged
from fluxhost.safety.moderator import Moderator
from fluxhost.safety.terms import SHIPPED, TermLists
from fluxhost.signing import KeyMode
from tests.helpers import SLUG, LiveServer, ProtocolClient

FLUXHOST = str(Path(sys.executable).with_name("fluxhost"))


@pytest.fixture(scope="session")
def tiny_classifiers(tmp_path_factory) -> tuple[Path, Path]:
    from fluxhost.testing.classifiers import tiny_image_classifier, tiny_text_classifier

    folder = tmp_path_factory.mktemp("classifiers")
    return tiny_text_classifier(folder / "text"), tiny_image_classifier(folder / "image")


def test_terms_are_refused_below_their_level():
    terms = TermLists()
    assert terms.check("a nude portrait in oil", 2) == "sexual"
    assert terms.check("a nude portrait in oil", 4) is None  # "nude" is level 4
    assert terms.check("A NUDE portrait", 0) == "sexual"
    assert terms.check("Self‑Harm awareness poster", 3) == "self-harm"  # a non-breaking hyphen
    assert terms.check("an explicit sex scene", 5) == "sexual"
    assert terms.check("the denuded hills at dawn", 0) is None  # whole words only
    assert terms.check(
        "A quiet, sun-drenched Los Angeles street, the Hollywood Sign between buildings", 0) is None
    assert set(terms.categories) == {"hate", "minors", "self-harm", "sexual", "violence"}


def shipped_terms_in(tmp_path) -> Path:
    """A copy of the shipped term folder, to edit."""
    folder = tmp_path / "terms"
    shutil.copytree(SHIPPED, folder)
    return folder


def test_term_files_are_reloaded_when_edited(tmp_path):
    folder = shipped_terms_in(tmp_path)
    terms = TermLists(folder, recheck_seconds=0)
    assert terms.check("a purple elephant", 2) is None
    (folder / "custom.txt").write_text("# ours\n3 purple elephant\n")
    assert terms.check("a Purple  Elephant!", 2) == "custom"
    (folder / "custom.txt").write_text("2 purple elephant\n")
    assert terms.check("a purple elephant", 2) is None
    (folder / "custom.txt").write_text("seven purple elephant\n")
    with pytest.raises(ValueError, match="custom.txt line 1"):
        terms.check("anything", 0)


def test_the_folder_is_looked_at_again_only_after_the_recheck_interval(tmp_path):
    folder = shipped_terms_in(tmp_path)
    terms = TermLists(folder, recheck_seconds=3600)
    assert terms.check("a purple elephant", 2) is None
    (folder / "custom.txt").write_text("3 purple elephant\n")
    assert terms.check("a purple elephant", 2) is None
    terms.recheck_seconds = 0
    assert terms.check("a purple elephant", 2) == "custom"


def test_thresholds_follow_the_tolerance():
    scores = {"normal": 0.4, "NSFW": 0.62}
    assert flagged(scores, {"nsfw"}, 0) == "nsfw"
    assert flagged(scores, {"nsfw"}, 2) == "nsfw"  # 0.60
    assert flagged(scores, {"nsfw"}, 3) is None  # 0.75
    assert flagged({"nsfw": 0.96}, {"nsfw"}, 5) == "nsfw"
    assert flagged({"nsfw": 1.0}, {"nsfw"}, 6) is None
    assert flagged({"normal": 0.99}, {"nsfw"}, 0) is None


class ScoresOf:
    def __init__(self, scores):
        self.given = scores

    def scores(self, _item):
        return self.given


def test_the_moderator_combines_terms_and_classifiers():
    moderator = Moderator(text_model="controlled", image_model="controlled", unsafe_labels=frozenset({"toxic"}))
    moderator.text, moderator.image = ScoresOf({"toxic": 0.7}), ScoresOf({"toxic": 0.5})
    assert moderator.check_prompt("a nude study", 2) == "sexual"  # terms first
    assert moderator.check_prompt("a calm lake", 2) == "toxic" and moderator.check_prompt("a calm lake", 3) is None
    image = Image.new("RGB", (8, 8))
    assert moderator.check_image(image, 1) == "toxic" and moderator.check_image(image, 2) is None
    assert moderator.check_prompt("a nude study", 6) is None and moderator.check_image(image, 6) is None
    assert "term lists" in moderator.describe() and "controlled" in moderator.describe()


def test_tiny_classifiers_load_and_score(tiny_classifiers):
    text, image = tiny_classifiers
    moderator = Moderator(text_model=str(text), image_model=str(image), unsafe_labels=frozenset({"nsfw", "normal"}))
    moderator.load()
    picture = Image.new("RGB", (300, 200), (120, 30, 30))
    assert moderator.check_image(picture, 0) in {"nsfw", "normal"}  # one of two labels scores at least 0.5
    assert moderator.check_image(picture, 5) is None
    assert moderator.check_prompt("a calm lake", 0) in {"nsfw", "normal"}
    assert set(moderator.text.scores("a calm lake")) == {"nsfw", "normal"}


def test_a_moderated_prompt_ends_the_task_without_generating(server, client, tmp_path):
    answer = client.run(prompt="a nude portrait in oil")
    task = client.wait(answer["taskid"])
    assert task["status"] == "task_postprocess_end" and task["pexit"] != "0"
    assert task["debugerror"] == "Request Moderated: sexual" and task["outputs"] == []
    assert server.service.dispatcher.worker.models[SLUG].engine.batches == 0
    tolerant = client.wait(client.run(prompt="a nude portrait in oil", safetyTolerance="6")["taskid"])
    assert tolerant["pexit"] == "0"

    env = {**os.environ, "FLUXHOST_API_KEY": client.key.api_key, "FLUXHOST_API_SECRET": client.key.api_secret,
           "FLUXHOST_SERVER": server.base_url, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    refused = subprocess.run([FLUXHOST, "run", "a nude portrait", "-o", str(tmp_path)], env=env, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 5 and "nude" not in refused.stderr.replace("a nude portrait", "")


def test_a_moderated_image_is_neither_stored_nor_served(make_settings, tiny_classifiers):
    _text, image = tiny_classifiers
    settings = make_settings(safety_image_model=str(image), safety_unsafe_labels="nsfw,normal")
    with LiveServer(settings) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        task = client.wait(client.run(safetyTolerance="0")["taskid"])
        assert task["pexit"] != "0" and task["debugerror"].startswith("Content Moderated: ")
        assert task["outputs"] == []
        assert not any(path.is_file() for path in settings.files_dir.rglob("*"))
        assert client.wait(client.run(safetyTolerance="6")["taskid"])["pexit"] == "0"
        [tool] = client.call("Tool/Detail", {"slugowner": "black-forest-labs", "slugproject": "flux-pro-1.1"})["tool"]
    items = {item["id"]: item for item in tool["parameters"][0]["items"]}
    assert str(image) in items["safetyTolerance"]["description"]
    assert "term lists (hate, minors, self-harm, sexual, violence)" in items["safetyTolerance"]["description"]
    assert "Not available on this server" in items["promptUpsampling"]["description"]
    assert items["promptUpsampling"]["available"] is False and "available" not in items["safetyTolerance"]


def test_a_classifier_that_cannot_load_fails_closed(make_settings, tmp_path):
    with LiveServer(make_settings(safety_image_model=str(tmp_path / "absent"))) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        task = client.wait(client.run()["taskid"])
    assert task["pexit"] != "0" and "image classifier could not be loaded" in task["debugerror"]
