"""Pipeline text parsing and the pass registry's typed options."""

from dataclasses import dataclass
from typing import Literal

import pytest

from slimcc.errors import PipelineError
from slimcc.passes.base import Pass, PassResult, register_pass, unregister_pass, options_of
from slimcc.passes.pipeline import format_pipeline, parse_pipeline, split_top_level


@pytest.fixture
def demo_pass():
    @register_pass("test-demo-options")
    @dataclass(frozen=True)
    class DemoOptions(Pass):
        """Demo pass with one option of each type."""

        ratio: float = 0.5
        rounds: int = 1
        strict: bool = False
        criterion: Literal["l1", "l2"] = "l1"
        exclude: str = ""

        def __post_init__(self):
            if not 0 <= self.ratio < 1:
                raise PipelineError(f"ratio must be in [0, 1), got {self.ratio}")

        def run(self, model, ctx=None):
            return PassResult(False)

    yield DemoOptions
    unregister_pass("test-demo-options")


def test_split_respects_braces():
    assert split_top_level("a,b{x=1,y=2},c") == ["a", "b{x=1,y=2}", "c"]


@pytest.mark.parametrize("text", ["a{x=1", "a}x", "a{b{c}}"])
def test_split_rejects_unbalanced(text):
    with pytest.raises(PipelineError):
        split_top_level(text)


def test_options_are_typed(demo_pass):
    (configured,) = parse_pipeline("test-demo-options{ratio=0.25,rounds=3,strict=true,criterion=l2,exclude=a;b}")
    assert configured == demo_pass(ratio=0.25, rounds=3, strict=True, criterion="l2", exclude="a;b")
    kinds = {o.name: o.type_name for o in options_of(demo_pass)}
    assert kinds == {"ratio": "float", "rounds": "int", "strict": "bool", "criterion": "l1|l2", "exclude": "str"}


def test_spec_round_trips(demo_pass):
    passes = parse_pipeline("test-demo-options{rounds=2,criterion=l2}, test-demo-options")
    text = format_pipeline(passes)
    assert text == "test-demo-options{rounds=2,criterion=l2},test-demo-options"
    assert parse_pipeline(text) == passes


@pytest.mark.parametrize("text, fragment", [
    ("no-such-pass", "unknown pass 'no-such-pass'; valid passes:"),
    ("test-demo-options{bogus=1}", "unknown option 'bogus'; valid options: ratio, rounds"),
    ("test-demo-options{ratio=abc}", "expected a number"),
    ("test-demo-options{ratio=nan}", "finite"),
    ("test-demo-options{rounds=1.5}", "expected an integer"),
    ("test-demo-options{strict=maybe}", "true or false"),
    ("test-demo-options{criterion=l3}", "one of l1, l2"),
    ("test-demo-options{ratio}", "needs a value"),
    ("test-demo-options{ratio=1,ratio=2}", "given twice"),
    ("test-demo-options{ratio=1.5}", "ratio must be in [0, 1)"),
    ("test-demo-options,,test-demo-options", "empty pass name"),
    ("", "empty pipeline"),
])
def test_bad_pipelines_give_one_line_errors(demo_pass, text, fragment):
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
