"""One configuration schema: declarations give defaults, bounds, flags and one-line errors; CLI flags,
the server config and scenarios derive from EngineConfig/ServerConfig instead of re-declaring them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from nightjar_rl.cli import build_parser
from nightjar_rl.env.scenario import ENGINE_FIELDS, Scenario, load_scenario
from nightjar_rl.runtime.server_config import ServerConfig
from nightjar_rl.schema import ConfigError, add_arguments, check, declarations, defaults, from_mapping, option
from nightjar_rl.stack import EngineConfig


@dataclass
class Toy:
    rows: int = option(4, "rows", low=1)
    share: float = option(0.5, "a share", above=0.0, high=1.0)
    mode: str = option("fast", "mode", choices=("fast", "slow"))
    limit: int | None = option(None, "optional limit", int, low=0)
    on: bool = option(False, "a switch")

    def validate(self, where: str = "toy") -> Toy:
        check(self, where)
        return self


@pytest.mark.parametrize("field, value, message", [
    ("rows", 0, "toy: field 'rows' must be an integer >= 1, got 0"),
    ("rows", 2.0, "toy: field 'rows' must be an integer >= 1, got 2.0"),
    ("rows", True, "toy: field 'rows' must be an integer >= 1, got True"),
    ("share", 0.0, "toy: field 'share' must be a number in (0, 1], got 0.0"),
    ("share", float("inf"), "toy: field 'share' must be a number in (0, 1], got inf"),
    ("mode", "warp", "toy: field 'mode' must be one of fast, slow, got 'warp'"),
    ("limit", -1, "toy: field 'limit' must be an integer >= 0 or null, got -1"),
    ("on", "yes", "toy: field 'on' must be true or false, got 'yes'"),
])
def test_declarations_validate_with_one_line(field, value, message):
    with pytest.raises(ConfigError) as info:
        Toy(**{field: value}).validate()
    assert str(info.value) == message


def test_from_mapping_rejects_unknown_fields_and_flags_follow_the_declarations():
    assert from_mapping(Toy, {"rows": 2}, "toy").rows == 2
    with pytest.raises(ConfigError, match=r"toy: unknown field\(s\): colour"):
        from_mapping(Toy, {"colour": 1}, "toy")
    parser = argparse.ArgumentParser()
    add_arguments(parser, Toy, skip=("limit",))
    args = parser.parse_args(["--rows", "7", "--on"])
    assert (args.rows, args.share, args.mode, args.on) == (7, 0.5, "fast", True)
    assert not hasattr(args, "limit")
    assert defaults(Toy) == {"rows": 4, "share": 0.5, "mode": "fast", "limit": None, "on": False}


@pytest.mark.parametrize("command", [["generate", "--out", "x"], ["bench"], ["serve"]])
def test_every_engine_flag_default_is_the_schemas(command):
    args = build_parser().parse_args(command)
    for name, value in defaults(EngineConfig).items():
        assert getattr(args, name) == value, name
    if command[0] == "serve":
        for name, value in defaults(ServerConfig).items():
            assert getattr(args, name) == value, name


def test_scenarios_and_the_server_compose_the_engine_config():
    assert set(ENGINE_FIELDS) == set(declarations(EngineConfig))
    scenario = Scenario()
    assert scenario.engine == EngineConfig() and scenario.max_k == EngineConfig().max_speculation
    server = ServerConfig(engine=EngineConfig(max_seq_len=77, temperature=0.3))
    assert (server.max_seq_len, server.temperature, server.model_name) == (77, 0.3, EngineConfig().model)
    with pytest.raises(ConfigError, match="scenario 'x': field 'top_p' must be a number in"):
        load_scenario({"name": "x", "top_p": 2})


def test_bad_flags_name_the_flag(capsys):
    from nightjar_rl.cli import main

    assert main(["bench", "--model", "tiny-random", "--top-p", "0"]) == 2
    assert capsys.readouterr().err.strip() == "nightjar-rl: error: --top-p must be a number in (0, 1], got 0.0"
