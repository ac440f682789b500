"""The training command line is generated from ``TrainConfig``: one option per field, defaults from the fields."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

import resnet
from train.cli import build_parser, flag, parse_args
from train.config import TrainConfig

# The options train.cifar / train.imagenet have always had, with their defaults and choices: the contract the
# generated parser keeps (scripts, docs and run folders' args.json use these names).
CONTRACT: dict[str, tuple[object, tuple[str, ...] | None]] = {
    "--data": (None, None),
    "--depth": (None, None),
    "--plain": (False, None),
    "--shortcut": (None, ("A", "B", "C")),
    "--variant": ("v1.5", ("v1", "v1.5")),
    "--zero-init-residual": (False, None),
    "--input-size": (None, None),
    "--train-limit": (None, None),
    "--val-size": (None, None),
    "--batch-size": (None, None),
    "--lr": (None, None),
    "--momentum": (None, None),
    "--weight-decay": (None, None),
    "--max-iters": (None, None),
    "--milestones": (None, None),
    "--plateau": (None, None),
    "--warmup-lr": (None, None),
    "--flip": (None, None),
    "--eval-every": (None, None),
    "--label-smoothing": (None, None),
    "--out": (None, None),
    "--resume": (None, None),
    "--no-resume": (False, None),
    "--save-every": (500, None),
    "--stop-at-iter": (None, None),
    "--eval-crops": ("ten", ("ten", "center")),
    "--device": ("auto", ("auto", "cpu", "cuda")),
    "--amp": ("auto", ("auto", "off", "bf16", "fp16")),
    "--channels-last": (None, None),
    "--compile": (False, None),
    "--sync-bn": (False, None),
    "--workers": (None, None),
    "--threads": (None, None),
    "--seed": (0, None),
    "--deterministic": (False, None),
    "--log-every": (20, None),
    "--progress": ("auto", ("auto", "bar", "lines")),
    "--no-tensorboard": (False, None),
}
NEGATABLE = {"--plateau", "--flip", "--channels-last"}  # --no-X keeps its meaning: None = the recipe's value


def _options(family: str, dataset: str) -> dict[str, argparse.Action]:
    parser = build_parser(f"python -m train.{family}", family, dataset)
    return {a.option_strings[0]: a for a in parser._actions if a.dest != "help"}


@pytest.mark.parametrize(("family", "dataset"), [("cifar", "cifar"), ("imagenet", "imagenet")])
def test_every_option_is_a_field_with_the_fields_default_and_choices(family: str, dataset: str) -> None:
    options = _options(family, dataset)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert {a.dest for a in options.values()} == set(fields) - {"family"}  # every field but the command's own
    for opt, action in options.items():
        f = fields[action.dest]
        assert opt == flag(f.name)
        assert action.default == (dataset if f.name == "dataset" else f.default), opt
        assert action.choices == f.metadata["choices"], opt
        assert action.help and action.help.startswith(f.metadata["help"].split("{")[0]), opt
    assert options["--dataset"].choices == ("cifar", "digits", "imagenet")


@pytest.mark.parametrize("family", ["cifar", "imagenet"])
def test_generated_options_keep_every_existing_flag_default_and_choice(family: str) -> None:
    options = _options(family, family)
    assert set(options) - {"--dataset"} == set(CONTRACT)
    for opt, (default, choices) in CONTRACT.items():
        action = options[opt]
        assert (action.default, action.choices) == (default, choices), opt
        negatable = isinstance(action, argparse.BooleanOptionalAction)
        assert negatable == (opt in NEGATABLE), opt
        if negatable:
            assert action.option_strings == [opt, "--no-" + opt[2:]]


def test_parsed_values_keep_their_types_and_checks() -> None:
    config = parse_args(
        ["--shortcut", "c", "--no-flip", "--plateau", "--milestones", "10,20", "--lr", "0.05", "--workers", "0"],
        "t",
        "cifar",
        "digits",
    )
    assert (config.shortcut, config.flip, config.plateau, config.milestones) == ("C", False, True, (10, 20))
    assert (config.lr, config.workers, config.channels_last, config.dataset) == (0.05, 0, None, "digits")
    for argv, message in [
        (["--lr", "0"], "expected a positive number"),
        (["--max-iters", "-3"], "expected a positive integer"),
        (["--save-every", "x"], "expected an integer >= 0"),
        (["--milestones", "5,a"], "milestones must be comma-separated"),
        (["--amp", "fp8"], "invalid choice"),
        (["--dataset", "mnist"], "invalid choice"),
    ]:
        with pytest.raises(resnet.UsageError, match=message):
            parse_args(argv, "t", "cifar", "cifar")


def test_help_names_each_familys_depths_and_the_groups() -> None:
    cifar = " ".join(build_parser("python -m train.cifar", "cifar", "cifar").format_help().split())
    imagenet = " ".join(build_parser("python -m train.imagenet", "imagenet", "imagenet").format_help().split())
    assert "6n+2" in cifar and "6n+2" not in imagenet and "18, 34, 50, 101, 152" in imagenet
    for title in ("data and network", "recipe overrides", "run folder", "speed and reproducibility"):
        assert title in cifar
    assert "{depths}" not in cifar and "80% (default 0.01" in cifar  # argparse's %% became one %
