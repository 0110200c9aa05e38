"""Tokens (keys, secrets, socket tokens) are alphanumeric, of the asked length, and unbiased."""

from collections import Counter

from fluxhost.store.schema import ALPHANUMERIC, random_token


def test_a_token_has_the_asked_length_and_only_alphanumeric_characters():
    for length in (1, 8, 30, 32, 200):
        token = random_token(length)
        assert len(token) == length
        assert set(token) <= set(ALPHANUMERIC)


def test_every_character_is_equally_likely():
    """62 characters over 256 byte values: a plain ``byte % 62`` would draw the first eight 25 %
    more often than the rest. Over 248,000 characters each is expected 4,000 times (sd about 63),
    a 25 % bias would put eight of them near 4,840."""
    counts = Counter("".join(random_token(248) for _ in range(1000)))
    assert set(counts) == set(ALPHANUMERIC)
    assert max(counts.values()) < 4400 and min(counts.values()) > 3600


def test_tokens_differ():
    assert len({random_token(30) for _ in range(1000)}) == 1000
