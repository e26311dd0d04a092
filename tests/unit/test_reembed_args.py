"""One ReembedArgs for route, CLI, relay and job: the parser and the argv are generated from it."""

from __future__ import annotations

import pytest

from serve_app.reembed_args import ReembedArgs, build_arg_parser


def test_argv_round_trips_through_the_parser() -> None:
    args = ReembedArgs(source="collection:mock", model="minilm-l6-v2", org=["a", "b"], num_cpus=0.45,
                       to_version="v3", no_switch=True, placement_timeout_s=30.0)
    argv = args.to_argv()
    assert argv == ["--source", "collection:mock", "--model", "minilm-l6-v2", "--to-version", "v3",
                    "--num-cpus", "0.45", "--placement-timeout-s", "30", "--org", "a", "--org", "b", "--no-switch"]
    assert ReembedArgs.parse(argv) == args
    assert ReembedArgs.model_validate(args.model_dump()) == args  # what the outbox row carries


def test_every_field_has_a_flag_with_its_description() -> None:
    flags = {a.dest: a for a in build_arg_parser()._actions if a.option_strings}
    for name, field in ReembedArgs.model_fields.items():
        assert flags[name].option_strings == ["--" + name.replace("_", "-")]
        assert flags[name].help == field.description


def test_out_of_range_value_exits_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        ReembedArgs.parse(["--model", "m", "--batch-size", "0"])
    assert stop.value.code == 2
    assert "--batch-size" in capsys.readouterr().err


def test_unknown_field_is_refused() -> None:
    with pytest.raises(ValueError, match="extra"):
        ReembedArgs.model_validate({"model": "m", "batchsize": 3})
