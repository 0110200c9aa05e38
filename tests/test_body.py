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
