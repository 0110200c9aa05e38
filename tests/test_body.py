import pytest

from fluxhost.http.body import BodyError, parse_object_text


def test_the_seed_detail_body_after_the_shell_ate_its_quotes():
    assert parse_object_text('{ "tasktoken": eDcCm5yyUfIvMFspTwww49OUfgXkQt, }') == {
        "tasktoken": "eDcCm5yyUfIvMFspTwww49OUfgXkQt"
    }


def test_json_keeps_its_types():
    assert parse_object_text('{"seed": 42, "promptUpsampling": false}') == {"seed": 42, "promptUpsampling": False}


def test_lenient_values_stay_strings():
    assert parse_object_text("{ aspectRatio: 16:9, seed: 42, }") == {"aspectRatio": "16:9", "seed": "42"}


@pytest.mark.parametrize("text", ["{", '{"a": ', "{ a b c", "{}}", '{"a": [1, 2}'])
def test_unparseable_bodies_are_refused(text):
    with pytest.raises(BodyError):
        parse_object_text(text)


def test_a_lenient_body_with_aliases_is_refused_before_it_is_built():
    """Each alias repeats what its anchor names: this body of 311 bytes, read before any key is
    checked, would build 9**7 values and hold the event loop for seconds (9 times more a level)."""
    levels = ["a0: &a0 [" + ",".join(["x"] * 9) + "]"]
    levels += [f"a{level}: &a{level} [" + ",".join([f"*a{level - 1}"] * 9) + "]" for level in range(1, 7)]
    with pytest.raises(BodyError, match="aliases are not taken"):
        parse_object_text("{" + ", ".join(levels) + "}")
    assert parse_object_text("{ prompt: &p a fox, seed: 7 }") == {"prompt": "a fox", "seed": "7"}  # an anchor alone
