"""The LoRA trainer on the tiny FLUX pipeline, and the training run's bookkeeping: a run stopped
and resumed from its checkpoint ends with the very adapter an unbroken run makes, the pipeline
draws as before once training ends, checkpoints are pruned to those asked to be kept, captions
take the trigger word."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fluxhost.engines.training import Checkpoint, TrainingExample, TrainingPlan, TrainingStopped
from fluxhost.events import LocalEventBus
from fluxhost.orders import FileRef, Training, TrainingImage, WorkOrder
from fluxhost.runtime.training import Manifest, TrainingRun, caption_of
from fluxhost.settings import ModelSettings
from fluxhost.storage.local import LocalFileStore
from fluxhost.store.work import ClaimedTask
from tests.helpers import TORCH_THREADS

PLAN = TrainingPlan(steps=6, learning_rate=1e-2, rank=4, batch_size=2, resolution=64, seed=1, save_every=2)


class Recorder:
    def __init__(self, stop_at: int | None = None):
        self.stop_at = stop_at
        self.steps: list[tuple[int, int, float]] = []
        self.checkpoints = []
        self.drawn: list[tuple[int, int]] = []

    def step(self, step: int, total: int, loss: float) -> bool:
        self.steps.append((step, total, loss))
        return step != self.stop_at

    def checkpoint(self, checkpoint) -> None:
        self.checkpoints.append(checkpoint)

    def samples(self, step: int, images: list[Image.Image]) -> None:
        self.drawn.append((step, len(images)))


@pytest.fixture
def engine(tiny_weights):
    import torch

    from fluxhost.engines.flux import FluxEngine

    torch.set_num_threads(TORCH_THREADS)
    engine = FluxEngine(str(tiny_weights), ModelSettings(steps=2, max_sequence_length=32), device="cpu")
    engine.load()
    return engine


EXAMPLES = [TrainingExample(Image.new("RGB", (80, 64), colour), f"a {colour} zq")
            for colour in ("red", "blue", "green")]


def picture(engine) -> np.ndarray:
    from fluxhost.engines.base import GenerationRequest, generate

    [image] = generate(engine, GenerationRequest("a zq", 64, 64, 7, 2, 3.5), lambda: None, lambda *_: True)
    return np.asarray(image, dtype=int)


def test_a_stopped_training_resumed_from_its_checkpoint_ends_as_an_unbroken_one(engine):
    from safetensors.torch import load

    unbroken = Recorder()
    final = engine.train(PLAN, EXAMPLES, None, unbroken)
    assert [checkpoint.step for checkpoint in unbroken.checkpoints] == [2, 4, 6] and final.step == 6

    stopped = Recorder(stop_at=3)
    with pytest.raises(TrainingStopped) as stop:
        engine.train(PLAN, EXAMPLES, None, stopped)
    assert stop.value.checkpoint.step == 3  # kept on the way out
    resumed = Recorder()
    again = engine.train(PLAN, EXAMPLES, stop.value.checkpoint, resumed)
    assert [step for step, _total, _loss in resumed.steps] == [4, 5, 6]
    expected, got = load(final.adapter), load(again.adapter)
    assert expected.keys() == got.keys() and all(np.array_equal(expected[key], got[key]) for key in expected)
    assert any(key.startswith("transformer.single_transformer_blocks.0.proj_mlp.lora_A") for key in got)


def test_the_pipeline_draws_as_before_once_training_ends_and_samples_use_the_adapter(engine):
    before = picture(engine)
    recorder = Recorder()
    plan = TrainingPlan(steps=4, learning_rate=1e-2, rank=4, batch_size=2, resolution=64, seed=2, sample_every=2,
                        sample_prompts=("a zq", "a red zq"))
    engine.train(plan, EXAMPLES, None, recorder)
    assert recorder.drawn == [(2, 2), (4, 2)]
    assert np.array_equal(picture(engine), before)
    assert engine.adapters.loaded == []  # the samples' adapters were let go
    assert not any(parameter.requires_grad for parameter in engine._pipeline.transformer.parameters())


def test_losses_are_finite_and_the_adapter_moves_away_from_its_start(engine):
    from safetensors.torch import load

    recorder = Recorder()
    final = engine.train(PLAN, EXAMPLES, None, recorder)
    assert all(np.isfinite(loss) and loss > 0 for _step, _total, loss in recorder.steps)
    ups = [tensor for key, tensor in load(final.adapter).items() if "lora_B" in key]
    assert ups and all(float(tensor.abs().max()) > 0 for tensor in ups)  # B starts at zero


def test_every_layer_of_the_saved_adapter_loads_as_a_lora_run_loads_it(engine, tmp_path: Path):
    """diffusers skips keys it does not recognise without a word: a file saved in another key
    layout loads only some of its layers."""
    import hashlib

    import torch
    from safetensors.torch import load

    from fluxhost.engines.base import Adapter

    final = engine.train(PLAN, EXAMPLES, None, Recorder())
    path = tmp_path / "trained.safetensors"
    path.write_bytes(final.adapter)
    adapter = Adapter(str(path), hashlib.sha256(final.adapter).hexdigest())
    with torch.inference_mode():
        engine.adapters.activate([adapter])
    name = f"lora_{adapter.digest[:16]}"
    loaded = [module for module in engine._pipeline.transformer.modules()
              if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict) and name in module.lora_A]
    assert len(loaded) == sum("lora_A" in key for key in load(final.adapter)) == 16  # 12 double, 4 single block


@pytest.mark.parametrize(("caption", "trigger", "trained"), [
    ("a red [trigger] on grey", "zq", "a red zq on grey"),
    ("a red square", "zq", "zq, a red square"),
    ("zq standing", "zq", "zq standing"),
    ("", "zq", "zq"),
    ("  a   [trigger] ", "", "a"),
])
def test_captions_take_the_trigger_word(caption, trigger, trained):
    assert caption_of(caption, trigger) == trained


def claimed_training(tmp_path: Path, **fields) -> tuple[LocalFileStore, ClaimedTask, Training]:
    """A training task as a worker claims it, its file store in ``tmp_path``."""
    files = LocalFileStore(tmp_path, "http://127.0.0.1:1/files")
    training = Training(images=(TrainingImage(file=FileRef(folder="0" * 64, name="a.png", content_type="image/png",
                                                            size=1)),),
                        steps=10, learning_rate=1e-3, rank=4, batch_size=1, resolution=64,
                        checkpoints_folder=files.new_folder(), project_id=1, **fields)
    order = WorkOrder(prompt="", width=64, height=64, seed=1, output_format="png", aspect_ratio="", training=training)
    return files, ClaimedTask(1, "token", "wiro/train-flux-lora", order, 0.0, files.new_folder(), None), training


def test_the_learning_rate_warms_up_then_decays_to_zero_along_a_cosine():
    from fluxhost.engines.training import learning_rate_scale

    scales = [learning_rate_scale(step, 300) for step in range(300)]
    assert scales[:3] == [1 / 20, 2 / 20, 3 / 20] and scales[19] == 1.0  # 20 warm-up steps
    assert all(later < earlier for earlier, later in zip(scales[20:], scales[21:], strict=False)) and scales[-1] < 1e-3
    assert learning_rate_scale(0, 5) == 1.0  # a short training: a warm-up of one step
    assert abs(learning_rate_scale(160, 300) - 0.5) < 1e-9  # half-way through the decay


def test_a_run_that_lost_its_task_writes_nothing_more_to_its_folder(tmp_path: Path):
    """Its lease ran out and another worker may have taken the task over, resuming from the folder:
    the first run's last checkpoint would replace (and prune) the one the other resumes from."""
    files, task, training = claimed_training(tmp_path, save_every=100, keep_checkpoints=1, sample_every=0)
    holds, lines = [True], []
    first = TrainingRun(task, files, LocalEventBus(), lines, lambda: holds[0], lambda picture: None,
                        holds=lambda: holds[0])
    first.checkpoint(Checkpoint(100, b"adapter 100", b"state 100"))
    holds[0] = False
    taken_over = TrainingRun(task, files, LocalEventBus(), [], lambda: True, lambda picture: None)
    first.checkpoint(Checkpoint(151, b"adapter 151", b"state 151"))
    first.samples(151, [Image.new("RGB", (8, 8))])
    assert Manifest.read(files, training.checkpoints_folder) == taken_over.manifest
    assert taken_over.manifest.step == 100
    assert files.read(training.checkpoints_folder, taken_over.manifest.state) == b"state 100"  # still there
    assert lines[-1] == "The checkpoint of step 151 is not kept: the task is no longer this worker's."


def test_checkpoints_are_pruned_to_those_asked_to_be_kept(tmp_path: Path):
    files, task, training = claimed_training(tmp_path, save_every=2, keep_checkpoints=2, sample_every=0)
    run = TrainingRun(task, files, LocalEventBus(), [], lambda: True, lambda picture: None)
    for step in (2, 4, 6):
        run.checkpoint(Checkpoint(step, f"adapter {step}".encode(), f"state {step}".encode()))
    manifest = Manifest.read(files, training.checkpoints_folder)
    assert (manifest.adapters, manifest.state, manifest.step) == (
        ["adapter-000004.safetensors", "adapter-000006.safetensors"], "state-000006.pt", 6)
    folder = training.checkpoints_folder
    stored = sorted(path.name for path in (tmp_path / folder[:2] / folder).iterdir())
    assert stored == ["adapter-000004.safetensors", "adapter-000006.safetensors", "checkpoints.json",
                      "state-000006.pt"]
    assert [(output.name, output.size) for output in run.outputs()] == [
        ("adapter-000004.safetensors", 9), ("adapter-000006.safetensors", 9)]
    # the next claim, after a lost worker
    again = TrainingRun(task, files, LocalEventBus(), [], lambda: True, lambda picture: None)
    assert again._resume().step == 6 and again._resume().adapter == b"adapter 6"


def test_a_sample_picture_moderation_flags_is_withheld_and_the_training_goes_on(tmp_path: Path):
    files, task, training = claimed_training(tmp_path, save_every=0, keep_checkpoints=1, sample_every=3,
                                             sample_prompts=("a red", "a blue"))
    lines: list[str] = []

    def screen(picture: Image.Image) -> str | None:
        return "violence" if picture.getpixel((0, 0)) == (255, 0, 0) else None

    run = TrainingRun(task, files, LocalEventBus(), lines, lambda: True, screen)
    run.samples(3, [Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")])
    run.samples(6, [Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "red")])
    assert Manifest.read(files, training.checkpoints_folder).samples == ["sample-000003-2.png"]
    assert [output.name for output in run.outputs()] == ["sample-000003-2.png"]
    assert lines == ["Step 3: sample picture 1 withheld (Content Moderated: violence).", "Step 3: 1 sample picture(s).",
                     "Step 6: sample picture 1 withheld (Content Moderated: violence).",
                     "Step 6: sample picture 2 withheld (Content Moderated: violence)."]


def test_gradient_checkpointing_trains_the_same_adapter_and_every_optimizer_runs(engine):
    from safetensors.torch import load

    def adapter(**options) -> dict:
        plan = TrainingPlan(steps=2, learning_rate=1e-2, rank=4, batch_size=2, resolution=64, seed=1,
                            gradient_accumulation=2, **options)
        return load(engine.train(plan, EXAMPLES, None, Recorder()).adapter)

    plain, checkpointed = adapter(), adapter(gradient_checkpointing=True)
    assert all(np.array_equal(plain[key], checkpointed[key]) for key in plain)
    assert any(not np.array_equal(plain[key], value) for key, value in adapter(optimizer="adafactor").items())
    assert all(np.array_equal(plain[key], value) for key, value in adapter(optimizer="adamw8bit").items())  # CPU: AdamW
