"""The one dataclass -> command line generator (resnet.dataclass_cli) that train and serve share."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from resnet import UsageError
from resnet.dataclass_cli import UsageParser, add_options, option, values_from
from serve.settings import build_parser as serve_parser
from train.cli import build_parser as train_parser


def _option_helps(parser) -> dict[str, str]:
    return {a.option_strings[-1]: a.help for a in parser._actions if a.option_strings and a.help}


@pytest.mark.parametrize(
    "parser",
    [serve_parser(), train_parser("python -m train.cifar", "cifar", "cifar")],
    ids=["serve", "train.cifar"],
)
def test_help_states_each_default_once_and_never_none(parser) -> None:
    helps = _option_helps(parser)
    assert helps, "no options generated"
    for opt, text in helps.items():
        assert "default: None" not in text, opt
        assert len(re.findall(r"\bdefault\b", text, re.I)) <= 1, f"{opt} states its default twice: {text}"


def test_serve_help_names_the_environment_variable_and_the_default() -> None:
    text = _option_helps(serve_parser())["--port"]
    assert "env RESNET_SERVE_PORT" in text and "default: " in text


@dataclass
class _Demo:
    size: int = option(3, "how many")
    mode: str = option("a", "which one", choices=("a", "b"))
    fast: bool = option(False, "go fast")


def test_flag_beats_environment_beats_default() -> None:
    p = UsageParser(prog="demo")
    add_options(p, _Demo, env_prefix="DEMO_")
    env = {"DEMO_SIZE": "7", "DEMO_MODE": "b"}
    assert _Demo(**values_from(_Demo, p.parse_args([]), env, "DEMO_")) == _Demo(7, "b", False)
    assert _Demo(**values_from(_Demo, p.parse_args(["--size", "9"]), env, "DEMO_")).size == 9
    assert _Demo(**values_from(_Demo, p.parse_args([]), {}, "DEMO_")) == _Demo()


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--size", "x"], {}, "invalid int value"),
        ([], {"DEMO_MODE": "c"}, "must be one of a, b"),
        ([], {"DEMO_FAST": "maybe"}, "must be true or false"),
    ],
)
def test_bad_values_are_one_line_usage_errors(argv, env, needle) -> None:
    p = UsageParser(prog="demo")
    add_options(p, _Demo, env_prefix="DEMO_")
    with pytest.raises(UsageError, match=needle):
        values_from(_Demo, p.parse_args(argv), env, "DEMO_")
