import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluxhost.tools import (
    ASPECT_RATIOS,
    SEED_MAX,
    Catalog,
    InputError,
    Tool,
    size_for_aspect_ratio,
    validate_inputs,
)


@pytest.mark.parametrize("ratio", ASPECT_RATIOS)
def test_aspect_ratios_give_about_a_megapixel_in_multiples_of_32(ratio):
    width, height = size_for_aspect_ratio(ratio)
    w, h = (int(p) for p in ratio.split(":"))
    assert width % 32 == 0 and height % 32 == 0
    assert 0.85e6 < width * height < 1.2e6
    assert abs(width / height - w / h) / (w / h) < 0.05


def test_defaults_follow_the_seed():
    inputs = validate_inputs({"prompt": "a cat", "seed": "7"})
    assert (inputs.aspect_ratio, inputs.width, inputs.height) == ("16:9", 1376, 768)
    assert inputs.output_format == "png" and inputs.safety_tolerance == 2 and not inputs.prompt_upsampling
    assert inputs.parameters == {"prompt": "a cat", "seed": "7"}


def test_strings_and_json_values_are_both_accepted():
    as_strings = validate_inputs({"prompt": "x", "seed": "42", "safetyTolerance": "3", "promptUpsampling": "true"})
    as_json = validate_inputs({"prompt": "x", "seed": 42, "safetyTolerance": 3, "promptUpsampling": True})
    assert (as_strings.seed, as_strings.safety_tolerance, as_strings.prompt_upsampling) == (42, 3, True)
    assert (as_json.seed, as_json.safety_tolerance, as_json.prompt_upsampling) == (42, 3, True)


@pytest.mark.parametrize("seed", [None, ""])
def test_a_missing_seed_is_drawn_and_recorded(seed):
    raw = {"prompt": "x"} if seed is None else {"prompt": "x", "seed": seed}
    inputs = validate_inputs(raw)
    assert 0 <= inputs.seed <= SEED_MAX
    assert inputs.parameters["seed"] == str(inputs.seed)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "Request parameter [prompt] required"),
        ({"prompt": "   "}, "Request parameter [prompt] required"),
        ({"prompt": "x", "aspectRatio": "7:3"}, "Request parameter [aspectRatio] must be one of"),
        ({"prompt": "x", "seed": "abc"}, "Request parameter [seed] must be between 0 and 4294967295"),
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
    assert text.strip() == "" or int(text.strip()) == seed


def test_catalog_finds_both_spellings_of_the_slug():
    catalog = Catalog([Tool("black-forest-labs", "flux-pro-1.1", "d")])
    assert catalog.find("black-forest-labs", "flux-pro-1-1") is catalog.find("black-forest-labs", "flux-pro-1.1")
    assert catalog.find("black-forest-labs", "flux-pro-2") is None
