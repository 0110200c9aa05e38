"""The hosted FLUX family: every slug its official n8n nodes call, with the inputs they send."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import pytest
from PIL import Image

from fluxhost import DEFAULT_MODEL, family
from fluxhost.input_images import size_like
from fluxhost.models import served_models
from fluxhost.orders import CONTROL_DEFAULT, Control
from fluxhost.settings import ModelSettings, Settings
from fluxhost.signing import KeyMode
from fluxhost.tools import Catalog
from fluxhost.wiro.schema import InputError, InputSchema
from tests.helpers import TORCH_THREADS, LiveServer, ProtocolClient, free_port

SEED_INPUTS = ["prompt", "promptUpsampling", "safetyTolerance", "aspectRatio", "seed", "outputFormat"]
SEED_EDIT_INPUTS = ["prompt", "inputImage", "inputImageUrl", *SEED_INPUTS[1:]]
DEV = ["prompt", "width", "height", "samples", "scale", "seed", "steps"]
LORA = ["selectedLoraModel", "selectedLoraModelPrivate", "selectedLoraModelPrivateUrl"]
# What each official node sends (n8n-nodes-wiroai), as the table lists it; an image tool
# also takes the file itself as inputImage, right after inputImageUrl.
NODE_INPUTS: dict[str, list[str]] = {
    "black-forest-labs/flux-pro-1.1": SEED_INPUTS,
    "black-forest-labs/flux-pro-1-1-ultra": SEED_INPUTS,
    "black-forest-labs/flux-kontext-pro": SEED_EDIT_INPUTS,
    "black-forest-labs/flux-kontext-max": SEED_EDIT_INPUTS,
    "wiroai/flux-kontext-max-multi": ["prompt", "inputImageUrl", "inputImage", "inputImage2Url", "outputFormat",
                                      "promptUpsampling", "safetyTolerance", "seed"],
    "black-forest-labs/flux-2-pro": ["prompt", "inputImageUrl", "inputImage", "width", "height", "outputFormat",
                                     "safetyTolerance", "seed"],
    "black-forest-labs/flux-2-flex": ["prompt", "inputImageUrl", "inputImage", "width", "height", "outputFormat",
                                      "safetyTolerance", "seed", "guidance", "steps"],
    "wiro/FLUX.2-dev": ["prompt", "inputImageUrl", "inputImage", "width", "height", "samples", "scale", "seed",
                        "steps"],
    "wiro/FLUX.2-dev-turbo": ["prompt", "inputImageUrl", "inputImage", "width", "height", "samples", "scale", "seed",
                              "steps"],
    "wiro/flux_kontext_dev": ["prompt", "inputImageUrl", "inputImage", "samples", "scale", "seed", "steps"],
    "wiro/flux_kontext_dev_with_2_image": ["prompt", "inputImageUrl", "inputImage", "inputImage2Url", "samples",
                                           "scale", "seed", "steps"],
    "wiro/flux_kontext_dev_with_3_image": ["prompt", "inputImageUrl", "inputImage", "inputImage2Url",
                                           "inputImage3Url", "samples", "scale", "seed", "steps"],
    "wiro/text-to-image-flux": ["selectedModel", "selectedModelPrivate", *DEV],
    "wiro/text-to-image-flux-fast": ["selectedModel", "selectedModelPrivate", *DEV],
    # and, last, fluxhost's own "loras" (several adapters with their own weights)
    "wiro/text-to-image-flux-lora": ["selectedModel", "selectedModelPrivate", *LORA, *DEV, "loras"],
    "wiro/text-to-image-flux-lora-fast": ["selectedModel", "selectedModelPrivate", *LORA, *DEV, "loras"],
    "wiro/img-to-img-flux": ["prompt", "inputImageUrl", "inputImage", "strength", "samples", "scale", "seed", "steps",
                             "selectedModel", "selectedModelPrivate"],
    "wiroai/flux-upscaler": ["inputImageUrl", "inputImage", "scale", "steps", "controlnetConditioningScale",
                             "controlGuidanceStart", "controlGuidanceEnd"],
    "tencent/Hunyuan-Flux-SRPO": ["prompt", "inputImageUrl", "inputImage", "strength", "width", "height", "samples",
                                  "scale", "seed", "steps"],
    # and, last, fluxhost's own "resumeTaskId" (go on from an ended training's checkpoint)
    "wiro/train-flux-lora": [
        "selectedFolder", "selectedFolderUrl", "triggerWord", "trainModelName", "trainModelDescription",
        "trainingSteps", "steps", "learningRate", "lora_rank", "batchSize", "resolution", "optimizer",
        "gradient_accumulation_steps", "gradient_checkpointing", "caption_dropout_rate", "cache_latents",
        "cache_latents_to_disk", "quantize", "referenceModel", "guidance_scale", "seed", "saveEvery",
        "max_step_saves_to_keep", "sampleEvery", "disable_sampling", "prompt", "autocaption", "autocaption_prefix",
        "autocaption_suffix", "resumeTaskId"],
    "wiro/train-flux-lora-portrait": ["selectedFolder", "selectedFolderUrl", "triggerWord", "trainModelName",
                                      "trainingSteps", "learningRate", "resumeTaskId"],
}


def default_settings(tmp_path, database_url, **overrides: Any) -> Settings:
    """The embedded defaults (no models table: the whole family on the demo model), on a loopback port."""
    return Settings(data_dir=tmp_path / "data", database_url=database_url, host="127.0.0.1", port=free_port(),
                    torch_threads=TORCH_THREADS, worker_process=False, shutdown_grace_seconds=2.0, **overrides)


def schema(slug: str) -> InputSchema:
    tool = Catalog.from_models(served_models(Settings())).find_slug(slug)
    return InputSchema.of(tool, {}, 10_000)


def test_every_family_slug_is_listed_with_the_inputs_its_node_sends(tmp_path, database_url):
    with LiveServer(default_settings(tmp_path, database_url, worker_concurrency=0)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        listed = client.call("Tool/List", {"limit": "100", "summary": "true"})
        details = {slug: client.call("Tool/Detail", dict(zip(("slugowner", "slugproject"), slug.split("/"),
                                                              strict=True)))["tool"][0] for slug in NODE_INPUTS}
        covers = {slug: httpx.get(detail["image"], timeout=10) for slug, detail in details.items()}
    assert listed["total"] == len(NODE_INPUTS) == len(listed["tool"])
    assert {f"{tool['slugowner']}/{tool['slugproject']}" for tool in listed["tool"]} == set(NODE_INPUTS)
    for slug, inputs in NODE_INPUTS.items():
        detail = details[slug]
        assert [item["id"] for item in detail["parameters"][0]["items"]] == inputs, slug
        assert detail["title"] == family.BY_SLUG[slug].title and detail["id"].isdigit(), slug
        assert isinstance(detail["taskstat"]["runcount"], int)
    assert len({detail["id"] for detail in details.values()}) == len(NODE_INPUTS)  # one number per tool
    for slug, cover in covers.items():  # each its own picture, drawn by the demo model
        assert cover.status_code == 200 and cover.headers["content-type"] == "image/jpeg", slug
    assert len({cover.content for cover in covers.values()}) == len(NODE_INPUTS)
    upscaler = {item["id"]: item for item in details["wiroai/flux-upscaler"]["parameters"][0]["items"]}
    assert "upscale factor" in upscaler["scale"]["description"]
    ultra = {item["id"]: item for item in details["black-forest-labs/flux-pro-1-1-ultra"]["parameters"][0]["items"]}
    square = next(option for option in ultra["aspectRatio"]["options"] if option["value"] == "1:1")
    assert (square["width"], square["height"]) == ("2048", "2048")


def test_zero_and_empty_mean_the_tools_default_as_the_node_sends_them():
    node = {"selectedModel": "", "selectedModelPrivate": "", "selectedLoraModel": "", "selectedLoraModelPrivate": "",
            "selectedLoraModelPrivateUrl": "", "prompt": "a red circle", "steps": 0, "scale": 0, "samples": 0,
            "seed": "", "width": 0, "height": 0}
    request = schema("wiro/text-to-image-flux-lora").parse(node)
    assert (request.steps, request.guidance, request.num_images, request.seed, request.size) == (
        None, None, 1, None, (1024, 1024))
    assert request.ignored_inputs == ()
    asked = schema("wiro/text-to-image-flux").parse({**node, "steps": 12, "scale": 4.5, "samples": 3, "seed": "7",
                                                     "width": 1000, "height": 600})
    assert (asked.steps, asked.guidance, asked.num_images, asked.seed, asked.size) == (12, 4.5, 3, 7, (1008, 608))
    flex = schema("black-forest-labs/flux-2-flex").parse({"prompt": "p", "seed": 0, "guidance": 0, "steps": 0,
                                                          "width": 768, "height": 1024, "safetyTolerance": 0,
                                                          "outputFormat": "jpeg"})
    assert (flex.seed, flex.guidance, flex.size, flex.output_format, flex.safety_tolerance) == (
        0, None, (768, 1024), "jpeg", 0)  # FLUX.2's node sends seed 0: a seed like any other
    redraw = schema("wiro/img-to-img-flux").parse({"prompt": "p", "inputImageUrl": "https://example.com/a.png",
                                                    "strength": 0, "samples": 2})
    assert (redraw.strength, redraw.num_images, redraw.input_image) == (None, 2, "https://example.com/a.png")


def test_the_upscaler_reads_scale_as_its_factor_and_zero_controls_as_defaults():
    upscaler = schema("wiroai/flux-upscaler")
    node = {"inputImageUrl": "https://example.com/a.png", "scale": 0, "steps": 0, "controlnetConditioningScale": 0,
            "controlGuidanceStart": 0, "controlGuidanceEnd": 0}
    request = upscaler.parse(node)
    assert (request.prompt, request.upscale, request.guidance, request.control) == ("", None, None, CONTROL_DEFAULT)
    asked = upscaler.parse({**node, "scale": "4", "controlnetConditioningScale": 0.9, "controlGuidanceStart": 0.1,
                            "controlGuidanceEnd": 0.8})
    assert (asked.upscale, asked.control) == (4.0, Control(conditioning_scale=0.9, guidance_start=0.1,
                                                           guidance_end=0.8))
    for bad, message in (({"scale": 5}, "[scale] must be between 1 and 4"),
                         ({"controlGuidanceStart": 0.5, "controlGuidanceEnd": 0.4},
                          "[controlGuidanceEnd] must be larger than controlGuidanceStart"),
                         ({"inputImageUrl": ""}, "[inputImage] required")):
        with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
            upscaler.parse({**node, **bad})


@pytest.mark.parametrize(("slug", "inputs", "message"), [
    ("wiro/text-to-image-flux", {"samples": 5}, "Request parameter [samples] must be between 1 and 4"),
    ("wiro/text-to-image-flux", {"width": 4096}, "Request parameter [width] must be between 64 and 2048"),
    ("wiro/text-to-image-flux", {"scale": "strong"}, "Request parameter [scale] must be integer or float"),
    ("wiro/text-to-image-flux", {"selectedModel": "sdxl"}, "Request parameter [selectedModel] must be empty"),
    ("wiro/flux_kontext_dev_with_2_image", {"inputImageUrl": "https://example.com/a.png"},
     "Request parameter [inputImage2Url] required"),
    ("black-forest-labs/flux-2-pro", {"seed": "lucky"}, "Request parameter [seed] must be integer or float"),
])
def test_family_inputs_are_refused_in_the_protocols_words(slug, inputs, message):
    with pytest.raises(InputError) as refused:
        schema(slug).parse({"prompt": "a red circle", **inputs})
    assert str(refused.value).startswith(message)


def test_weighted_adapters_are_read_from_a_json_list():
    lora = schema("wiro/text-to-image-flux-lora")
    sent = '[{"url": "https://example.com/a.safetensors", "scale": 0.5}, {"private": "abc", "scale": "-1"}]'
    for value in (sent, json.loads(sent)):  # a form's text, or JSON itself
        request = lora.parse({"prompt": "p", "selectedLoraModelPrivateUrl": "https://example.com/b.safetensors",
                              "loras": value})
        assert [(ref.source, ref.name, ref.weight) for ref in request.loras] == [
            ("url", "https://example.com/b.safetensors", 1.0), ("url", "https://example.com/a.safetensors", 0.5),
            ("upload", "abc", -1.0)]
    for bad in ('[{"url": "u", "private": "p"}]', '{"url": "u"}', "[1]", '[{"url": "u", "weight": 2}]', "nope",
                '[{"url": "u", "scale": 9}]', "[" * 5000 + "]" * 5000):  # the last past the JSON parser's depth
        with pytest.raises(InputError, match=r"^Request parameter \[loras\]"):
            lora.parse({"prompt": "p", "loras": bad})
    with pytest.raises(InputError, match="no LoRA library"):
        lora.parse({"prompt": "p", "loras": '[{"model": "style"}]'})


def test_a_refused_image_or_adapter_is_named_by_the_input_that_gave_it(make_settings):
    """A second image, or an adapter of the loras list, was refused as if the first image's input
    (inputImageUrl) or a single adapter input (selectedLoraModelPrivateUrl) had been at fault."""
    two_images, lora = "wiro/flux_kontext_dev_with_2_image", "wiro/text-to-image-flux-lora"
    models = {two_images: ModelSettings(weights="/unused", kind="edit"), lora: ModelSettings(weights="/unused")}
    with LiveServer(make_settings(engine="bench", worker_concurrency=0, models=models)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        first = io.BytesIO()
        Image.new("RGB", (64, 64), "red").save(first, "PNG")
        [uploaded] = httpx.post(f"{live.base_url}/v1/File/Upload", headers=client.headers(), timeout=30,
                                files={"file": ("a.png", first.getvalue(), "image/png")}).json()["list"]
        refused = client.call(f"Run/{two_images}", {"prompt": "both", "inputImageUrl": uploaded["url"],
                                                   "inputImage2Url": "http://10.0.0.1/b.png"})  # refused, never dialled
        assert refused["errors"][0]["message"].startswith("Request parameter [inputImage2Url] points to a non-public")
        refused = client.call(f"Run/{lora}", {"prompt": "p", "loras": [{"url": "http://10.0.0.1/a.safetensors"}]})
        assert refused["errors"][0]["message"].startswith("Request parameter [loras] points to a non-public")
        refused = client.call(f"Run/{lora}", {"prompt": "p", "selectedLoraModelPrivateUrl": "http://10.0.0.1/a"})
        assert refused["errors"][0]["message"].startswith(
            "Request parameter [selectedLoraModelPrivateUrl] points to a non-public")
        assert client.call("Task/List", {})["total"] == "0"


def test_inputs_a_family_tool_does_not_take_are_named_not_read():
    request = schema("wiro/FLUX.2-dev").parse({"prompt": "p", "outputFormat": "jpeg", "aspectRatio": "1:1"})
    assert request.ignored_inputs == ("aspectRatio", "outputFormat")
    assert (request.output_format, request.aspect_ratio) == ("png", None)


def output_sizes(task: dict[str, Any]) -> list[tuple[int, int]]:
    return [Image.open(io.BytesIO(httpx.get(output["url"], timeout=30).content)).size for output in task["outputs"]]


@pytest.mark.slow  # the demo model draws each slug's pictures: about a minute on two cores
def test_every_family_slug_the_demo_serves_runs_as_its_node_calls_it(tmp_path, database_url):
    from tests.test_editing import photo, post_files

    with LiveServer(default_settings(tmp_path, database_url)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        [uploaded] = post_files(client, "File/Upload", {}, {"file": ("shapes.png", photo(96, 64), "image/png")})["list"]
        image = uploaded["url"]
        dev = {"prompt": "a red circle on the left on a blue background", "steps": 0, "scale": 0, "seed": "",
               "selectedModel": "", "selectedModelPrivate": ""}
        lora = {"selectedLoraModel": "", "selectedLoraModelPrivate": "", "selectedLoraModelPrivateUrl": ""}
        runs = {
            DEFAULT_MODEL: ({"prompt": "a green square at the top", "aspectRatio": "1:1", "seed": ""}, 1, (1024, 1024)),
            "black-forest-labs/flux-pro-1-1-ultra": ({"prompt": "a yellow triangle", "aspectRatio": "2:1",
                                                      "outputFormat": "jpeg", "promptUpsampling": "false",
                                                      "safetyTolerance": "2", "seed": "3"}, 1, (2912, 1440)),
            "black-forest-labs/flux-2-pro": ({"prompt": "a white circle", "inputImageUrl": "", "width": 256,
                                              "height": 192, "outputFormat": "png", "safetyTolerance": 0, "seed": 0},
                                             1, (256, 192)),
            "black-forest-labs/flux-2-flex": ({"prompt": "a white circle", "width": 320, "height": 320, "steps": 0,
                                               "guidance": 0, "seed": 0}, 1, (320, 320)),
            "wiro/FLUX.2-dev": ({**dev, "inputImageUrl": "", "samples": 2, "width": 256, "height": 256}, 2,
                                (256, 256)),
            "wiro/FLUX.2-dev-turbo": ({**dev, "inputImageUrl": "", "samples": 0, "width": 0, "height": 0}, 1,
                                      (1024, 1024)),
            "wiro/text-to-image-flux": ({**dev, "samples": 3, "width": 384, "height": 256}, 3, (384, 256)),
            "wiro/text-to-image-flux-fast": ({**dev, "samples": 1, "width": 256, "height": 256}, 1, (256, 256)),
            "wiro/text-to-image-flux-lora": ({**dev, **lora, "samples": 2, "width": 256, "height": 256}, 2,
                                             (256, 256)),
            "wiro/text-to-image-flux-lora-fast": ({**dev, **lora, "samples": 0, "width": 256, "height": 256}, 1,
                                                  (256, 256)),
            "wiro/img-to-img-flux": ({**dev, "inputImageUrl": image, "strength": 0, "samples": 2}, 2, (1248, 832)),
            "wiroai/flux-upscaler": ({"inputImageUrl": image, "scale": 0, "steps": 0, "controlnetConditioningScale": 0,
                                      "controlGuidanceStart": 0, "controlGuidanceEnd": 0}, 1, (192, 128)),
            "tencent/Hunyuan-Flux-SRPO": ({**dev, "inputImageUrl": image, "strength": 0.6, "samples": 1,
                                           "width": 0, "height": 0}, 1, (1248, 832)),
            "wiro/flux_kontext_dev": ({"prompt": "make the circle blue", "inputImageUrl": image, "samples": 1,
                                       "scale": 0, "seed": "", "steps": 0}, 1, (1248, 832)),
            # the Kontext nodes: the picture's own shape, or the aspect ratio asked
            "black-forest-labs/flux-kontext-pro": ({"prompt": "make the background green", "inputImageUrl": image,
                                                    "promptUpsampling": "false", "safetyTolerance": "2",
                                                    "aspectRatio": "", "seed": "", "outputFormat": "jpeg"},
                                                   1, (1248, 832)),
            "black-forest-labs/flux-kontext-max": ({"prompt": "remove the circle", "inputImageUrl": image,
                                                    "promptUpsampling": "false", "safetyTolerance": "6",
                                                    "aspectRatio": "1:1", "seed": "7", "outputFormat": "png"},
                                                   1, (1024, 1024)),
        }
        tasks = {slug: client.call(f"Run/{slug}", inputs)["taskid"] for slug, (inputs, _count, _size) in runs.items()}
        done = {slug: client.wait(taskid, timeout=300) for slug, taskid in tasks.items()}
        two = client.call("Run/wiro/flux_kontext_dev_with_2_image",
                          {"prompt": "make it blue", "inputImageUrl": image, "inputImage2Url": image})
        two_done = client.wait(two["taskid"], timeout=300)
        sizes = {slug: output_sizes(task) for slug, task in done.items()}
    for slug, (_inputs, count, size) in runs.items():
        assert done[slug]["pexit"] == "0", (slug, done[slug]["debugerror"])
        assert sizes[slug] == [size] * count, slug
    # the demo editor reads one picture: two end the task with what to do, not a crash
    assert two_done["pexit"] == "1" and "reads one input image" in two_done["debugerror"], two_done["debugerror"]


@pytest.mark.slow  # tiny Kontext and FLUX.2 pipelines, one or two steps each
def test_the_editing_and_flux2_slugs_run_with_every_image_on_their_weights(make_settings, tmp_path_factory):
    from fluxhost.testing.tiny import ensure_tiny_pipeline
    from tests.test_editing import photo, post_files

    weights = tmp_path_factory.mktemp("weights")
    kontext = str(ensure_tiny_pipeline(weights / "kontext", "kontext"))
    klein = str(ensure_tiny_pipeline(weights / "klein", "klein"))
    small = {"steps": 1, "max_sequence_length": 32, "render_pixels": 64 * 64}  # drawn small, then resized
    models = {slug: ModelSettings(weights=kontext, guidance=2.5, **small) for slug in family.BY_SLUG
              if family.BY_SLUG[slug].family == "kontext"}
    models |= {slug: ModelSettings(weights=klein, guidance=1.0, **small) for slug in family.BY_SLUG
               if family.BY_SLUG[slug].family == "flux2"}
    with LiveServer(make_settings(models=models)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        urls = [post_files(client, "File/Upload", {}, {"file": (f"{n}.png", photo(96 + 32 * n, 64), "image/png")})[
            "list"][0]["url"] for n in range(3)]
        dev = {"samples": 0, "scale": 0, "seed": "", "steps": 0}
        shaped = [size_like(Image.new("RGB", (96 + 32 * n, 64))) for n in range(3)]  # the first input's shape
        runs = {
            "black-forest-labs/flux-kontext-pro": ({"prompt": "make it blue", "inputImageUrl": urls[0]}, 1,
                                                   shaped[0]),
            "wiroai/flux-kontext-max-multi": ({"prompt": "put them together", "inputImageUrl": urls[1],
                                               "inputImage2Url": urls[2], "outputFormat": "jpeg", "seed": ""}, 1,
                                              shaped[1]),
            "wiro/flux_kontext_dev": ({"prompt": "make it blue", "inputImageUrl": urls[0], **dev, "samples": 2}, 2,
                                      shaped[0]),
            "wiro/flux_kontext_dev_with_3_image": ({"prompt": "all three", "inputImageUrl": urls[0],
                                                   "inputImage2Url": urls[1], "inputImage3Url": urls[2], **dev}, 1,
                                                  shaped[0]),
            "black-forest-labs/flux-2-pro": ({"prompt": "like this", "inputImageUrl": urls[2], "width": 128,
                                              "height": 96, "seed": 0}, 1, (128, 96)),
            "wiro/FLUX.2-dev": ({"prompt": "a lighthouse", "inputImageUrl": "", "width": 64, "height": 64, **dev,
                                 "samples": 2}, 2, (64, 64)),
        }
        tasks = {slug: client.call(f"Run/{slug}", inputs)["taskid"] for slug, (inputs, _count, _size) in runs.items()}
        done = {slug: client.wait(taskid, timeout=300) for slug, taskid in tasks.items()}
        sizes = {slug: output_sizes(task) for slug, task in done.items()}
        kept = {slug: len(client.detail(taskid)["inputs"]) for slug, taskid in tasks.items()}
    for slug, (_inputs, count, size) in runs.items():
        assert done[slug]["pexit"] == "0", (slug, done[slug]["debugerror"])
        assert sizes[slug] == [size] * count, slug
    assert (kept["wiroai/flux-kontext-max-multi"], kept["wiro/flux_kontext_dev_with_3_image"]) == (2, 3)
