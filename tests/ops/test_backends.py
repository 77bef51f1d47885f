"""ops.backends.choose_backend: the backend choice query_field and the StyleGAN2 helpers share."""

import pytest

from get3dhuman.ops.backends import choose_backend

REASONS = {"fast": "no GPU", "interpreted": None, "plain": None}


def _reason(name, explicit):
    if name == "interpreted" and not explicit:
        return "for tests only"
    return REASONS[name]


def test_auto_takes_the_first_that_applies_and_says_why_the_others_were_skipped():
    assert choose_backend("auto", list(REASONS), _reason) == ("plain", {"fast": "no GPU", "interpreted": "for tests only"})


def test_a_backend_named_runs_where_it_can_and_is_refused_with_its_reason_where_not():
    assert choose_backend("interpreted", list(REASONS), _reason) == ("interpreted", {})
    with pytest.raises(ValueError, match=r"^SOME_ENV='fast' cannot run these inputs: no GPU$"):
        choose_backend("fast", list(REASONS), _reason, "SOME_ENV")
    with pytest.raises(ValueError, match=r"^backend must be 'auto' or one of \('fast', 'interpreted', 'plain'\), got 'gpu'"):
        choose_backend("gpu", list(REASONS), _reason)
    with pytest.raises(ValueError, match="no backend of .* can run these inputs"):
        choose_backend("auto", ["fast"], _reason)
