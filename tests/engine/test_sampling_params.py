"""SamplingParams: defaults, normalisation and one-line validation errors."""

from __future__ import annotations

import pytest

from ferrum_core.engine import SamplingParams
from ferrum_core.errors import InvalidInputError


def test_defaults_and_greedy_flag() -> None:
    params = SamplingParams()
    assert params.temperature == 1.0 and not params.greedy
    assert SamplingParams(temperature=0).greedy
    assert SamplingParams(top_k=1).greedy


def test_single_stop_string_becomes_a_tuple() -> None:
    assert SamplingParams(stop="###").stop == ("###",)
    assert SamplingParams(stop=None, stop_token_ids=None).stop == ()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -2),
        ("min_p", 1.1),
        ("repetition_penalty", 0.0),
        ("max_tokens", 0),
        ("seed", -1),
        ("logprobs", -1),
        ("stop", [""]),
        ("stop_token_ids", [-3]),
        ("bogus", 1),
    ],
)
def test_bad_values_raise_invalid_input(field: str, value: object) -> None:
    with pytest.raises(InvalidInputError) as info:
        SamplingParams(**{field: value})
    message = str(info.value)
    assert field in message and "\n" not in message


def test_params_are_frozen() -> None:
    params = SamplingParams()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        params.temperature = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 0),
        ("n", 17),
        ("n", 2.0),
        ("n", True),
        ("presence_penalty", 2.5),
        ("presence_penalty", -2.01),
        ("frequency_penalty", 3),
        ("frequency_penalty", "0.1"),
    ],
)
def test_bad_openai_fields_name_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidInputError) as info:
        SamplingParams(**{field: value})
    assert field in str(info.value)


def test_openai_fields_defaults_and_bounds() -> None:
    params = SamplingParams()
    assert (params.n, params.presence_penalty, params.frequency_penalty) == (1, 0.0, 0.0)
    assert not params.uses_count_penalty
    edge = SamplingParams(n=16, presence_penalty=-2.0, frequency_penalty=2)
    assert edge.n == 16 and edge.uses_count_penalty
    assert SamplingParams(frequency_penalty=0.1).uses_count_penalty
