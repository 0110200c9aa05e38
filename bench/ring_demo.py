"""The ring demo: the demo model learns a shape it has never drawn. Starts a throwaway `fluxhost
serve` on the demo model, uploads 16 drawn pictures of rings with their captions as a ZIP into a
folder, trains `wiro/train-flux-lora` on them, then draws the held-out captions (colour and place
pairs no training picture had) with `wiro/text-to-image-flux-lora`, with the adapter and without,
and reads every picture with the test's checker (:func:`fluxhost.testing.rings.read`).

    python bench/ring_demo.py [--steps 300] [--threads 1] [--pictures docs/screenshots]

Prints the training's time and the share of rings, right colours and right places, with and
without the adapter; saves the training set and the two sets of held-out pictures as PNG grids.
"""

from __future__ import annotations

import argparse
import io
import re
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

from _server import running_server
from fluxhost.client import Client, TaskInfo
from fluxhost.testing import rings

TRAIN = "wiro/train-flux-lora"
DRAW = "wiro/text-to-image-flux-lora"
SEEDS_PER_CAPTION = 2
COLUMNS = 8


def finished(client: Client, model: str, **inputs: object) -> TaskInfo:
    """Run ``model`` and wait for its task to end (followed on the socket); its outcome, succeeded."""
    info = client.run(model, **inputs).wait()
    if not info.succeeded:
        raise RuntimeError(f"task {info.id} did not succeed: {info.debugerror or info.status}")
    return info


def pictures(info: TaskInfo) -> list[Image.Image]:
    return [Image.open(io.BytesIO(httpx.get(output.url, timeout=60).content)).convert("RGB")
            for output in info.outputs]


def grid(pictures: list[Image.Image]) -> Image.Image:
    side = pictures[0].width
    canvas = Image.new("RGB", (side * COLUMNS, side * -(-len(pictures) // COLUMNS)), "white")
    for index, picture in enumerate(pictures):
        canvas.paste(picture, (side * (index % COLUMNS), side * (index // COLUMNS)))
    return canvas


def held_out_pictures(client: Client, held_out: list[rings.Ring],
                      **inputs: str) -> list[tuple[Image.Image, rings.Ring]]:
    drawn = []
    for ring in held_out:
        info = finished(client, DRAW, prompt=ring.caption(rings.TRIGGER), width=rings.SIDE, height=rings.SIDE,
                        samples=SEEDS_PER_CAPTION, seed="11", **inputs)
        drawn += [(picture, ring) for picture in pictures(info)]
    return drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--pictures", type=Path, default=Path("ring-demo"), help="folder for the PNG grids")
    parser.add_argument("--port", type=int, default=8791)
    arguments = parser.parse_args()
    arguments.pictures.mkdir(parents=True, exist_ok=True)
    trained, held_out = rings.split()

    with running_server(arguments.port, torch_threads=str(arguments.threads)) as (base_url, key), \
            Client(base_url, key["api_key"], key["api_secret"]) as client, tempfile.TemporaryDirectory() as folder:
        [made] = client.call("File/FolderCreate", {"name": "rings"})["list"]
        archive = Path(folder) / "rings.zip"
        archive.write_bytes(rings.training_zip(trained))
        client.call("File/Upload", {"folderid": made["id"], "file": archive}, retry=False)
        started = time.monotonic()
        info = finished(client, TRAIN, selectedFolder=made["id"], triggerWord=rings.TRIGGER, trainModelName="rings",
                        trainingSteps=arguments.steps, learningRate=0.005, lora_rank=16, batchSize=16,
                        resolution=rings.SIDE, caption_dropout_rate=0.1, optimizer="adamw",
                        gradient_checkpointing=False, disable_sampling=True, seed=0)
        seconds = time.monotonic() - started
        adapter = re.search(r"private LoRA model ([0-9a-f]{32})", info.debugoutput).group(1)
        print(f"trained {arguments.steps} steps on {len(trained)} rings in {seconds:.0f} s "
              f"({arguments.steps / seconds:.2f} steps/s, torch threads {arguments.threads}); adapter {adapter}")

        after = held_out_pictures(client, held_out, selectedLoraModelPrivate=adapter)
        before = held_out_pictures(client, held_out)

    print(f"{len(held_out)} held-out captions x {SEEDS_PER_CAPTION} seeds   ring  colour  place")
    for name, drawn in (("without the adapter", before), ("with the adapter", after)):
        score = rings.scores([(rings.read(picture), ring) for picture, ring in drawn])
        print(f"{name:>34}  {score['ring']:.2f}    {score['colour']:.2f}   {score['place']:.2f}")
    first = list(range(0, len(after), SEEDS_PER_CAPTION))[:2 * COLUMNS]  # one seed of 16 captions
    grid(rings.pictures(trained)).save(arguments.pictures / "rings-training.png")
    grid([before[index][0] for index in first]).save(arguments.pictures / "rings-before.png")
    grid([after[index][0] for index in first]).save(arguments.pictures / "rings-after.png")
    print(f"pictures: {arguments.pictures}/rings-training.png, rings-before.png, rings-after.png")


if __name__ == "__main__":
    main()
