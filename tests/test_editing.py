"""Editing by text: input images uploaded, inline or by URL, checked and kept with the task;
FLUX Kontext, image-to-image and FLUX.2 [klein] edits on tiny pipelines; File/Upload."""

import io
import os
import struct
import subprocess
import sys
import zlib
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from fluxhost.client import Client
from fluxhost.input_images import DEFAULT_LIMITS, decode, size_like
from fluxhost.settings import ModelSettings
from fluxhost.signing import KeyMode
from tests.helpers import SLUG, LiveServer, LoopbackServer, ProtocolClient

KONTEXT = "black-forest-labs/flux-kontext-pro"
FLUXHOST = str(Path(sys.executable).with_name("fluxhost"))


def photo(width: int = 640, height: int = 400, fmt: str = "PNG") -> bytes:
    """A smooth test picture (gradients and a disc), not noise."""
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    disc = ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.05)
    pixels = np.stack([x * 255, y * 255, disc * 255], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


class FileServer(LoopbackServer):
    """Serves ``files`` (path -> bytes) on loopback; anything else is a 404."""

    def __init__(self, files: dict[str, bytes]):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
                data = files.get(self.path)
                self.send_response(200 if data is not None else 404)
                self.send_header("content-length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def log_message(self, *args) -> None:
                pass

        super().__init__(Handler)


@pytest.fixture(scope="session")
def tiny_kontext(tmp_path_factory) -> Path:
    from fluxhost.testing.tiny import ensure_tiny_pipeline

    return ensure_tiny_pipeline(tmp_path_factory.mktemp("weights") / "tiny-kontext", "kontext")


@pytest.fixture
def editing(make_settings, tiny_kontext, tiny_weights):
    models = {SLUG: ModelSettings(weights=str(tiny_weights), steps=2, max_sequence_length=32),
              KONTEXT: ModelSettings(weights=str(tiny_kontext), steps=2, guidance=2.5, max_sequence_length=32,
                                     kind="edit")}
    with LiveServer(make_settings(models=models, callback_allowlist="127.0.0.1")) as live:
        yield live, ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))


def post_files(client: ProtocolClient, path: str, fields: dict, files: dict) -> dict:
    answer = httpx.post(f"{client.base_url}/v1/{path}", data=fields, files=files, headers=client.headers(), timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def output_bytes(task: dict) -> bytes:
    [output] = task["outputs"]
    return httpx.get(output["url"], timeout=30).content


def test_upload_then_edit_inline_and_by_url_give_the_same_image(editing):
    live, client = editing
    source = photo()
    uploaded = post_files(client, "File/Upload", {}, {"file": ("photo.png", source, "image/png")})
    [entry] = uploaded["list"]
    assert uploaded["result"] is True and entry["contenttype"] == "image/png" and entry["size"] == str(len(source))
    assert all(isinstance(value, str) for value in entry.values())
    assert httpx.get(entry["url"], timeout=30).content == source

    by_upload = client.wait(client.call(f"Run/{KONTEXT}", {"prompt": "make the sky purple", "seed": "3",
                                                           "inputImage": entry["url"]})["taskid"])
    inline = client.wait(post_files(client, f"Run/{KONTEXT}", {"prompt": "make the sky purple", "seed": "3"},
                                    {"inputImage": ("photo.png", source, "image/png")})["taskid"])
    again = client.wait(post_files(client, f"Run/{KONTEXT}", {"prompt": "make the sky purple", "seed": "3"},
                                   {"inputImage": ("photo.png", source, "image/png")})["taskid"])
    with FileServer({"/photo.png": source}) as files:
        by_url = client.wait(client.call(f"Run/{KONTEXT}", {"prompt": "make the sky purple", "seed": "3",
                                                            "inputImageUrl": f"{files.url}/photo.png"})["taskid"])
    results = [output_bytes(task) for task in (by_upload, inline, again, by_url)]
    assert all(task["pexit"] == "0" for task in (by_upload, inline, again, by_url))
    assert len(set(results)) == 1  # the same input and seed: the same bytes, however the image came

    edited = Image.open(io.BytesIO(results[0]))
    assert abs(edited.width / edited.height - 640 / 400) < 0.05  # the input's aspect ratio
    original = np.asarray(Image.open(io.BytesIO(source)).convert("RGB").resize(edited.size), dtype=int)
    assert np.abs(np.asarray(edited.convert("RGB"), dtype=int) - original).mean() > 10

    [shown] = inline["inputs"]
    assert shown["contenttype"] == "image/png" and inline["parameters"]["inputImage"] == shown["url"]
    assert httpx.get(shown["url"], timeout=30).content == source
    assert client.call("Task/InputOutputDelete", {"taskid": inline["id"]})["result"] is True
    assert httpx.get(shown["url"], timeout=30).status_code == 404
    assert client.detail(inline["id"])["inputs"] == []


def test_bad_inputs_are_refused_at_run_and_nothing_is_queued(make_settings, tiny_kontext):
    models = {KONTEXT: ModelSettings(weights=str(tiny_kontext), steps=2, max_sequence_length=32, kind="edit")}
    bomb = io.BytesIO()
    Image.new("1", (8000, 8000)).save(bomb, format="PNG")
    big = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    big_png = io.BytesIO()
    Image.fromarray(big).save(big_png, format="PNG")
    cases = {
        "not an image": (b"hello, not a picture", "must be a PNG, JPEG or WebP image"),
        "truncated": (photo()[:2000], "truncated or damaged"),
        "too large": (big_png.getvalue(), "is larger than"),
        "bomb": (bomb.getvalue(), "has 8000x8000 pixels"),
        "gif": (photo(fmt="GIF"), "must be a PNG, JPEG or WebP image"),
    }
    with LiveServer(make_settings(models=models, input_max_bytes=200_000, callback_allowlist="127.0.0.1")) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        for name, (data, message) in cases.items():
            refused = post_files(client, f"Run/{KONTEXT}", {"prompt": "edit"}, {"inputImage": ("x.png", data)})
            assert refused["result"] is False and message in refused["errors"][0]["message"], name
            uploaded = post_files(client, "File/Upload", {}, {"file": ("x.png", data)})
            assert uploaded["result"] is False and message in uploaded["errors"][0]["message"], name
        image = ("a.png", photo())
        for fields, files in (({"prompt": "edit"}, {"inputImage": image, "inputImageUrl": ("b.png", photo())}),
                              ({}, {"inputImage": image, "prompt": ("prompt.txt", b"edit")})):
            refused = post_files(client, f"Run/{KONTEXT}", fields, files)  # was a 500: a file kept in parameters
            wrong = next(name for name in files if name != "inputImage")
            assert refused["errors"][0]["message"] == (
                f"Request parameter [{wrong}] must be text, not a file (only inputImage takes one)")
        with FileServer({}) as files:
            missing = client.call(f"Run/{KONTEXT}", {"prompt": "edit", "inputImageUrl": f"{files.url}/gone.png"})
        assert "answered HTTP 404" in missing["errors"][0]["message"]
        no_image = client.call(f"Run/{KONTEXT}", {"prompt": "edit"})
        assert no_image["errors"][0]["message"] == "Request parameter [inputImage] required"
        assert client.call("Task/List", {})["total"] == "0"
    with LiveServer(make_settings(models=models)) as live:  # no allow-list: private addresses refused
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        private = client.call(f"Run/{KONTEXT}", {"prompt": "edit", "inputImageUrl": "http://10.0.0.7/photo.png"})
        assert "non-public address (10.0.0.7)" in private["errors"][0]["message"]
        assert client.call("Task/List", {})["total"] == "0"


def huge_png(width: int, height: int) -> bytes:
    """A PNG that says it is ``width`` x ``height`` and holds almost nothing: its header is all
    that is read before it is refused."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_an_image_past_pillows_own_guard_is_refused_for_its_pixels(make_settings):
    with LiveServer(make_settings(engine="bench", worker_concurrency=0)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        refused = post_files(client, "File/Upload", {}, {"file": ("huge.png", huge_png(40_000, 40_000))})
        assert refused == {"result": False, "errors": [
            {"code": 0, "message": "Request parameter [file] has more pixels than the 25000000 this server takes"}]}


def test_the_sdk_and_the_edit_command_send_images(editing, tmp_path):
    live, client = editing
    picture = tmp_path / "photo.jpg"
    picture.write_bytes(photo(fmt="JPEG"))
    with Client(live.base_url, client.key.api_key, client.key.api_secret) as sdk:
        info = sdk.run(KONTEXT, prompt="make it night", seed=1, inputImage=picture).wait(timeout=120)
        assert info.succeeded
        url = sdk.upload(picture)
        assert sdk.run(KONTEXT, prompt="make it night", seed=1, inputImage=url).wait(timeout=120).succeeded
    env = {**os.environ, "FLUXHOST_API_KEY": client.key.api_key, "FLUXHOST_API_SECRET": client.key.api_secret,
           "FLUXHOST_SERVER": live.base_url, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    target = tmp_path / "night.png"
    done = subprocess.run([FLUXHOST, "edit", str(picture), "make it night", "--seed", "4", "-o", str(target)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Image.open(target).size == Image.open(io.BytesIO(output_bytes(client.detail(str(info.id))))).size


def test_edit_tools_publish_their_inputs(editing):
    _live, client = editing
    [tool] = client.call("Tool/Detail", {"slugowner": "black-forest-labs", "slugproject": "flux-kontext-pro"})["tool"]
    items = {item["id"]: item for item in tool["parameters"][0]["items"]}
    assert items["inputImage"]["type"] == "fileinput" and items["inputImageUrl"]["type"] == "text"
    assert items["aspectRatio"]["default"] == "" and "image-editing" in tool["categories"]
    groups = {group["id"] for group in client.call("Tool/Explore", {})["explore"]}
    assert {"text-to-image", "image-editing", "image-to-image"} <= groups


def test_image_to_image_and_klein_edits(make_settings, tiny_weights, tmp_path_factory):
    from fluxhost.testing.tiny import ensure_tiny_pipeline

    klein = ensure_tiny_pipeline(tmp_path_factory.mktemp("weights") / "klein-edit", "klein")
    models = {"acme/img2img": ModelSettings(weights=str(tiny_weights), steps=4, max_sequence_length=32,
                                            kind="image-to-image"),
              "acme/klein-edit": ModelSettings(weights=str(klein), steps=2, guidance=1.0, max_sequence_length=32,
                                               kind="edit")}
    with LiveServer(make_settings(models=models)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        source = {"inputImage": ("photo.png", photo(512, 512), "image/png")}
        redrawn = client.wait(post_files(client, "Run/acme/img2img", {"prompt": "a watercolour", "strength": "0.5",
                                                                      "aspectRatio": "1:1"}, source)["taskid"])
        edited = client.wait(post_files(client, "Run/acme/klein-edit", {"prompt": "add snow"}, source)["taskid"])
        [tool] = client.call("Tool/Detail", {"slugowner": "acme", "slugproject": "img2img"})["tool"]
    assert redrawn["pexit"] == "0" and edited["pexit"] == "0", (redrawn["debugerror"], edited["debugerror"])
    assert "strength" in [item["id"] for item in tool["parameters"][0]["items"]]


def test_a_flux1_folder_with_a_kontext_transformer_edits(make_settings, tiny_weights, tiny_kontext):
    """``kontext``: FLUX.1 [dev]'s folder (its text encoders and VAE) with FLUX.1 Kontext's transformer
    serves an editing tool; without it the same folder refuses to."""
    as_kontext = ModelSettings(weights=str(tiny_weights), transformer=str(tiny_kontext / "transformer"), kontext=True,
                               steps=2, max_sequence_length=32, kind="edit")
    models = {KONTEXT: as_kontext, "acme/not-kontext": as_kontext.model_copy(update={"kontext": False})}
    with LiveServer(make_settings(models=models)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        source = {"inputImage": ("photo.png", photo(640, 400), "image/png")}
        edited = client.wait(post_files(client, f"Run/{KONTEXT}", {"prompt": "make the sky purple"}, source)["taskid"])
        served = live.service.dispatcher.worker.models
        assert edited["pexit"] == "0", edited["debugerror"]
        image = Image.open(io.BytesIO(output_bytes(edited)))
    assert abs(image.width / image.height - 640 / 400) < 0.05
    assert "edit" in served[KONTEXT].engine.kinds
    assert served["acme/not-kontext"].engine is None
    assert "cannot serve kind=edit" in served["acme/not-kontext"].load_error


def test_a_phone_jpeg_holding_more_than_one_picture_is_taken_as_a_jpeg():
    first, second = Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "blue")
    saved = io.BytesIO()
    first.save(saved, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(saved.getvalue())).format == "MPO"  # as Pillow reads a phone's JPEG
    taken = decode(saved.getvalue(), DEFAULT_LIMITS)
    assert (taken.format, taken.extension, taken.content_type) == ("JPEG", "jpg", "image/jpeg")
    assert taken.image.size == (64, 48) and taken.image.getpixel((0, 0))[0] > 200  # the first picture


@pytest.mark.parametrize("shape", [(1, 25_000), (25_000, 1), (3000, 20), (1248, 832)])
def test_an_input_of_any_shape_asks_for_an_output_of_a_shape_the_tools_draw(shape):
    width, height = size_like(Image.new("1", shape))
    assert max(width / height, height / width) <= 7 / 3 * 1.05  # 21:9 at most, 32-pixel rounding aside
    assert 0.9 * 1024 * 1024 <= width * height <= 1.1 * 1024 * 1024



def test_a_kontext_edit_is_drawn_at_the_size_asked_and_shows_its_steps(tiny_kontext):
    """FLUX.1 Kontext draws at a megapixel whatever size it is asked: each step's preview (at the
    size asked) failed to unpack, and the picture was drawn at 1440x720 and shrunk to 96x48."""
    from fluxhost.engines.base import GenerationRequest
    from fluxhost.engines.flux import FluxEngine

    engine = FluxEngine(str(tiny_kontext), ModelSettings(steps=2, max_sequence_length=32, kind="edit"), device="cpu")
    engine.load()
    previews = []
    request = GenerationRequest("make it blue", 96, 48, 7, 2, 2.5, images=(Image.new("RGB", (96, 48), "orange"),))
    [[image]] = engine.generate_batch([request], lambda: None,
                                      lambda index, step, total, preview: previews.append(preview().size) or True)
    assert image.size == (96, 48) and len(previews) == 2  # each step's preview unpacked


def test_a_16_bit_greyscale_png_keeps_its_greys():
    """Converted as it was, every value past 255 of 65,535 came out white: the input, all but white."""
    ramp = np.repeat(np.arange(0, 65536, 256, dtype=np.uint16)[None, :], 4, axis=0)  # black to white
    saved = io.BytesIO()
    Image.fromarray(ramp).save(saved, "PNG")
    taken = np.asarray(decode(saved.getvalue(), DEFAULT_LIMITS).image)
    assert taken.shape == (4, 256, 3) and (taken[..., 0] == taken[..., 2]).all()
    assert np.abs(taken[0, :, 0].astype(int) - np.arange(256)).max() <= 1  # the ramp, in 8 bits


@pytest.mark.parametrize("mode", ["RGB", "L", "P"])
def test_a_png_s_transparent_colour_is_flattened_onto_white(mode):
    """Transparency as a colour key (PNG's tRNS) kept its key colour where the picture is see-through:
    the editor read a black background that no viewer shows."""
    picture = Image.new("RGB", (8, 8), "black")
    picture.paste((255, 0, 0), (4, 0, 8, 8))
    keyed = picture.convert(mode)
    key = {"RGB": (0, 0, 0), "L": 0, "P": keyed.getpixel((0, 0))}[mode]
    saved = io.BytesIO()
    keyed.save(saved, "PNG", transparency=key)
    taken = decode(saved.getvalue(), DEFAULT_LIMITS).image
    assert taken.getpixel((0, 0)) == (255, 255, 255)  # see-through: white
    assert taken.getpixel((7, 7)) != (255, 255, 255)  # the red half stays
