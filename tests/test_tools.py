import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fluxhost.orders import ASPECT_RATIOS, SEED_MAX, WorkOrder, size_for_aspect_ratio
from fluxhost.settings import ModelSettings
from fluxhost.signing import KeyMode
from fluxhost.tools import Catalog, Tool
from fluxhost.wiro.render import tool_detail
from fluxhost.wiro.schema import InputError, InputSchema
from tests.helpers import SLUG, LiveServer, ProtocolClient


def schema_of(tool: Tool) -> InputSchema:
    return InputSchema.of(tool, {}, 10_000)


validate_inputs = schema_of(Tool("black-forest-labs", "flux-pro-1.1", "d")).parse  # the seed tool's inputs


@pytest.mark.parametrize("ratio", ASPECT_RATIOS)
def test_aspect_ratios_give_about_a_megapixel_in_multiples_of_32(ratio):
    width, height = size_for_aspect_ratio(ratio)
    w, h = (int(p) for p in ratio.split(":"))
    assert width % 32 == 0 and height % 32 == 0
    assert 0.85e6 < width * height < 1.2e6
    assert abs(width / height - w / h) / (w / h) < 0.05


def test_defaults_follow_the_seed():
    run = validate_inputs({"prompt": "a cat", "seed": "7"})
    assert (run.aspect_ratio, size_for_aspect_ratio(run.aspect_ratio), run.seed) == ("16:9", (1376, 768), 7)
    assert run.output_format == "png" and run.safety_tolerance == 2 and not run.prompt_upsampling
    assert run.parameters == {"prompt": "a cat", "seed": "7"}


def test_strings_and_json_values_are_both_accepted():
    strings = {"prompt": "x", "seed": "42", "safetyTolerance": "3", "promptUpsampling": "true"}
    as_strings = validate_inputs(strings)
    as_json = validate_inputs({"prompt": "x", "seed": 42, "safetyTolerance": 3, "promptUpsampling": True})
    assert (as_strings.seed, as_strings.safety_tolerance, as_strings.prompt_upsampling) == (42, 3, True)
    assert (as_json.seed, as_json.safety_tolerance, as_json.prompt_upsampling) == (42, 3, True)


@pytest.mark.parametrize("seed", [None, ""])
def test_a_missing_seed_is_left_for_the_operations_to_draw(seed):
    """Drawn and recorded at Run: test_lifecycle's test_a_random_seed_is_recorded_and_reproduces_the_image."""
    raw = {"prompt": "x"} if seed is None else {"prompt": "x", "seed": seed}
    assert validate_inputs(raw).seed is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "Request parameter [prompt] required"),
        ({"prompt": "   "}, "Request parameter [prompt] required"),
        ({"prompt": "x", "aspectRatio": "7:3"}, "Request parameter [aspectRatio] must be one of"),
        ({"prompt": "x", "seed": "abc"}, "Request parameter [seed] must be integer or float"),
        ({"prompt": "x", "seed": "-1"}, "Request parameter [seed] must be between 0 and 4294967295"),
        ({"prompt": "x", "seed": 4294967296}, "Request parameter [seed] must be between 0 and 4294967295"),
        ({"prompt": "x", "seed": 1.5}, "Request parameter [seed] must be between 0 and 4294967295"),
        ({"prompt": "x", "safetyTolerance": "9"}, "Request parameter [safetyTolerance] must be between 0 and 6"),
        ({"prompt": "x", "outputFormat": "gif"}, "Request parameter [outputFormat] must be one of jpeg, png"),
        ({"prompt": "x", "promptUpsampling": "maybe"}, "Request parameter [promptUpsampling] must be one of"),
        ({"prompt": {"nested": 1}}, "Request parameters are invalid."),
    ],
)
def test_bad_inputs_get_the_protocol_message(raw, message):
    with pytest.raises(InputError) as error:
        validate_inputs(raw)
    assert str(error.value).startswith(message)


@given(st.integers(min_value=0, max_value=SEED_MAX))
def test_every_valid_seed_round_trips(seed):
    assert validate_inputs({"prompt": "x", "seed": str(seed)}).seed == seed
    assert validate_inputs({"prompt": "x", "seed": seed}).seed == seed


@given(st.text())
def test_seed_text_is_accepted_only_as_an_integer(text):
    try:
        seed = validate_inputs({"prompt": "x", "seed": text}).seed
    except InputError:
        return
    assert (seed is None and text.strip() == "") or int(text.strip()) == seed


def test_catalog_finds_both_spellings_of_the_slug():
    catalog = Catalog([Tool("black-forest-labs", "flux-pro-1.1", "d")])
    assert catalog.find("black-forest-labs", "flux-pro-1-1") is catalog.find("black-forest-labs", "flux-pro-1.1")
    assert catalog.find("black-forest-labs", "flux-pro-2") is None


def test_each_model_publishes_and_checks_its_own_inputs():
    catalog = Catalog.from_models({
        SLUG: ModelSettings(),
        "acme/flux-dev": ModelSettings(steps=28, guidance=3.5, exposed_inputs=["steps", "guidance"]),
    })
    seed_tool, dev_tool = catalog.tools
    seed_schema, dev_schema = schema_of(seed_tool), schema_of(dev_tool)
    seed_ids = [item["id"] for item in tool_detail(seed_tool, seed_schema)["parameters"][0]["items"]]
    dev_items = {item["id"]: item for item in tool_detail(dev_tool, dev_schema)["parameters"][0]["items"]}
    assert "steps" not in seed_ids and "guidance" not in seed_ids
    assert list(dev_items)[: len(seed_ids)] == seed_ids
    assert (dev_items["steps"]["default"], dev_items["guidance"]["default"]) == ("28", "3.5")

    tuned = dev_schema.parse({"prompt": "x", "steps": "8", "guidance": 2.5})
    assert (tuned.steps, tuned.guidance) == (8, 2.5)
    assert tuned.parameters == {"prompt": "x", "steps": "8", "guidance": 2.5}
    untuned = dev_schema.parse({"prompt": "x"})
    assert untuned.steps is None and untuned.guidance is None  # the model's configured values
    with pytest.raises(InputError, match=r"Request parameter \[steps\] must be between 1 and 100"):
        dev_schema.parse({"prompt": "x", "steps": "500"})
    with pytest.raises(InputError, match=r"Request parameter \[guidance\]"):
        dev_schema.parse({"prompt": "x", "guidance": "lots"})
    ignored = seed_schema.parse({"prompt": "x", "seed": "1", "steps": "500"})  # not this model's input
    assert ignored.steps is None and ignored.parameters == {"prompt": "x", "seed": "1"}


def test_a_work_order_survives_its_codec():
    order = WorkOrder(prompt="a fox", width=1024, height=1024, seed=9, output_format="png", aspect_ratio="1:1")
    assert WorkOrder.decode(json.loads(json.dumps(order.encode()))) == order
    with pytest.raises(ValidationError):
        WorkOrder.decode({**order.encode(), "width": -5})


def test_a_tuned_run_reaches_the_engine(make_settings, tiny_weights):
    models = {
        SLUG: ModelSettings(weights=str(tiny_weights), steps=4, max_sequence_length=32),
        "acme/flux-dev": ModelSettings(weights=str(tiny_weights), steps=4, max_sequence_length=32,
                                       exposed_inputs=["steps", "guidance"]),
    }
    with LiveServer(make_settings(models=models)) as live:
        totals: dict[int, set[int]] = {}
        live.service.events.subscribe(
            lambda event: event.progress and totals.setdefault(event.task_id, set()).add(event.progress.total))
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        detail = client.call("Tool/Detail", {"slugowner": "acme", "slugproject": "flux-dev"})
        assert {"steps", "guidance"} <= {item["id"] for item in detail["tool"][0]["parameters"][0]["items"]}
        tuned = client.call("Run/acme/flux-dev", {"prompt": "a fox", "steps": "2", "guidance": "1.5"})
        plain = client.call(f"Run/{SLUG}", {"prompt": "a fox", "steps": "2"})
        refused = client.call("Run/acme/flux-dev", {"prompt": "a fox", "steps": "0"})
        assert refused["errors"][0]["message"] == "Request parameter [steps] must be between 1 and 100"
        for run in (tuned, plain):
            assert client.wait(run["taskid"])["pexit"] == "0"
    assert totals[int(tuned["taskid"])] == {2} and totals[int(plain["taskid"])] == {4}


def test_inputs_the_tool_does_not_take_are_named_not_dropped(make_settings):
    with LiveServer(make_settings(engine="bench")) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        task = client.wait(client.run(prompt="a fox", width=512, height="512", aspectRatio="1:1")["taskid"])
        assert task["pexit"] == "0"
        assert task["debugoutput"].startswith("Ignored inputs this tool does not take: height, width.")
        assert set(task["parameters"]) == {"prompt", "aspectRatio", "seed"}  # the random seed is recorded
        plain = client.wait(client.run(prompt="a fox", callbackUrl="")["taskid"])
        assert "Ignored" not in plain["debugoutput"]
    with LiveServer(make_settings(engine="bench", unknown_inputs="refuse")) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        refused = client.call(f"Run/{SLUG}", {"prompt": "a fox", "width": 512, "height": 512})
        assert refused["result"] is False
        assert refused["errors"][0]["message"] == (
            "Request parameter [height] is not an input of this tool (see Tool/Detail)")
        assert client.call("Task/List", {})["total"] == "0"
