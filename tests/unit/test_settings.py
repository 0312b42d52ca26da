"""``barnraise peer``'s layered settings: flag > environment > config file > default (peer/cli/settings.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from barnraise.coordinator.errors import ConfigError
from barnraise.peer.cli.main import build_parser, main
from barnraise.peer.cli.settings import UNSET

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PEER = "/ip4/10.0.0.1/tcp/31337"


def resolve(argv: list[str], env: dict | None = None, toml: str | None = None, tmp_path: Path | None = None):
    if toml is not None:
        path = tmp_path / "peer.toml"
        path.write_text(toml)
        argv = [*argv, "--config", str(path)]
    args = build_parser().parse_args(["peer", *argv])
    return args.settings.resolve(args, env or {})


def test_flag_beats_env_beats_file_beats_default(tmp_path):
    toml = "initial-peers = ['/ip4/10.0.0.9/tcp/1']\nmax-rounds = 5\nthreads = 4\ndevice = 'cpu'\n"
    env = {"BARNRAISE_MAX_ROUNDS": "7", "BARNRAISE_THREADS": "2"}
    args, origin = resolve(["--threads", "3"], env, toml, tmp_path)
    assert args.threads == 3 and origin["threads"] == "flag"
    assert args.max_rounds == 7 and origin["max_rounds"] == "env BARNRAISE_MAX_ROUNDS"
    assert args.device == "cpu" and origin["device"].startswith("file ")
    assert args.initial_peers == ["/ip4/10.0.0.9/tcp/1"]
    assert args.run_id == "" and origin["run_id"] == "default"
    assert args.cache_budget_mb == 1024 and args.listen == ["/ip4/0.0.0.0/tcp/0"]
    assert not any(v is UNSET for v in vars(args).values())


def test_a_flag_equal_to_its_default_still_beats_the_environment():
    args, origin = resolve(["--initial-peers", PEER, "--max-rounds", "0"], {"BARNRAISE_MAX_ROUNDS": "9"})
    assert args.max_rounds == 0 and origin["max_rounds"] == "flag"


def test_environment_parses_lists_numbers_paths_and_switches(tmp_path):
    env = {
        "BARNRAISE_INITIAL_PEERS": f"{PEER}, /ip4/10.0.0.2/tcp/2  /ip4/10.0.0.3/tcp/3",
        "BARNRAISE_CACHE_DIR": str(tmp_path / "cache"),
        "BARNRAISE_CACHE_BUDGET_MB": "12.5",
        "BARNRAISE_THREADS": " 2 ",
        "BARNRAISE_RUN_ID": "",  # empty: unset
        "BARNRAISE_PRINT_CONFIG": "1",  # about the layers: command line only
        "BARNRAISE_INJECT": "faults.json",  # a test hook: command line only
    }
    args, origin = resolve([], env)
    assert args.initial_peers == [PEER, "/ip4/10.0.0.2/tcp/2", "/ip4/10.0.0.3/tcp/3"]
    assert args.cache_dir == tmp_path / "cache" and isinstance(args.cache_dir, Path)
    assert args.cache_budget_mb == 12.5 and args.threads == 2
    assert origin["run_id"] == "default" and args.print_config is False and args.inject is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BARNRAISE_MAX_ROUNDS", "ten", "BARNRAISE_MAX_ROUNDS: 'ten' is not an integer"),
        ("BARNRAISE_BANDWIDTH_MBIT", "fast", "is not a number"),
        ("BARNRAISE_INITIAL_PEERS", " , ", "needs at least one value"),
    ],
)
def test_bad_environment_values_name_the_variable(name, value, message):
    env = {"BARNRAISE_INITIAL_PEERS": PEER, name: value}
    with pytest.raises(ConfigError, match=message):
        resolve([], env)


def test_switches_from_env_and_file(tmp_path):
    from barnraise.peer.cli.settings import Settings, from_text, from_toml

    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--quiet", action="store_true", help="a switch")
    switch = Settings(parser).actions["quiet"]
    assert [from_text(switch, w, "v") for w in ("1", "true", "Yes", "on")] == [True] * 4
    assert [from_text(switch, w, "v") for w in ("0", "false", "NO", "off")] == [False] * 4
    with pytest.raises(ConfigError, match="use true or false"):
        from_text(switch, "maybe", "BARNRAISE_QUIET")
    assert from_toml(switch, True, "f") is True
    with pytest.raises(ConfigError, match="expected true or false"):
        from_toml(switch, 1, "f")


def test_file_keys_take_dashes_or_underscores_and_toml_types(tmp_path):
    toml = (
        "initial_peers = '/ip4/10.0.0.1/tcp/1,/ip4/10.0.0.2/tcp/2'\n"
        "cache-budget-mb = 100\n"  # an integer for a float flag
        "cache_dir = '~/volunteer'\n"
        "listen = ['/ip4/127.0.0.1/tcp/0']\n"
    )
    args, _ = resolve([], {}, toml, tmp_path)
    assert args.initial_peers == ["/ip4/10.0.0.1/tcp/1", "/ip4/10.0.0.2/tcp/2"]
    assert args.cache_budget_mb == 100.0 and args.listen == ["/ip4/127.0.0.1/tcp/0"]
    assert args.cache_dir == Path.home() / "volunteer"


def test_the_config_file_can_come_from_the_environment(tmp_path):
    path = tmp_path / "env.toml"
    path.write_text(f"initial-peers = ['{PEER}']\n")
    args, origin = resolve([], {"BARNRAISE_CONFIG": str(path)})
    assert args.initial_peers == [PEER] and origin["initial_peers"] == f"file {path}"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("bogus = 1\n", "unknown key 'bogus'; the keys are the flags of `barnraise peer --help`"),
        ("config = 'other.toml'\n", "unknown key 'config'"),
        ("inject = 'faults.json'\n", "'inject' is a test hook: pass it on the command line"),
        ("max-rounds = 'ten'\n", "max-rounds: expected an integer, got 'ten'"),
        ("max-rounds = 2.5\n", "max-rounds: expected an integer"),
        ("threads = true\n", "threads: expected an integer, got True"),
        ("cache-dir = 3\n", "cache-dir: expected a path"),
        ("listen = 5\n", "listen: expected an array"),
        ("initial-peers = []\n", "initial-peers: needs at least one value"),
        ("max-rounds = \n", "is not valid TOML"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, toml, message):
    with pytest.raises(ConfigError, match=message) as err:
        resolve(["--initial-peers", PEER], {}, toml, tmp_path)
    assert "\n" not in str(err.value) and "peer.toml" in str(err.value)


def test_an_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config file .*missing.toml"):
        resolve(["--initial-peers", PEER, "--config", str(tmp_path / "missing.toml")])
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve(["--initial-peers", PEER, "--config", str(tmp_path)])


def test_missing_initial_peers_everywhere_is_the_usual_usage_error(capsys):
    assert main(["peer", "--initial-peers", PEER, "--print-config"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["peer", "--print-config"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().endswith(
        "barnraise peer: error: the following arguments are required: --initial-peers"
    )


def test_print_config_is_toml_that_config_reads_back(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BARNRAISE_MAX_ROUNDS", "4")
    monkeypatch.setenv("BARNRAISE_ANNOUNCE", "/ip4/203.0.113.7/tcp/1 /ip4/203.0.113.7/tcp/2")
    argv = [
        "peer",
        "--initial-peers",
        PEER,
        "--run-id",
        'r"1',
        "--cache-dir",
        str(tmp_path),
        "--print-config",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "max-rounds = 4  # env BARNRAISE_MAX_ROUNDS" in out
    assert "run-id = " in out and "# flag" in out and "# identity is not set" in out
    printed = tomllib.loads(out)
    assert printed["max-rounds"] == 4 and printed["run-id"] == 'r"1'
    assert printed["announce"] == ["/ip4/203.0.113.7/tcp/1", "/ip4/203.0.113.7/tcp/2"]
    assert "inject" not in printed and "print-config" not in printed
    monkeypatch.delenv("BARNRAISE_MAX_ROUNDS")
    monkeypatch.delenv("BARNRAISE_ANNOUNCE")
    path = tmp_path / "printed.toml"
    path.write_text(out)
    assert main(["peer", "--config", str(path), "--print-config"]) == 0
    again = capsys.readouterr().out
    assert tomllib.loads(again) == printed


def test_print_config_checks_values_like_a_run(capsys):
    assert main(["peer", "--initial-peers", PEER, "--codec", "nope", "--print-config"]) == 2
    assert "unknown codec 'nope'" in capsys.readouterr().err


def test_max_compute_share_must_be_a_share(capsys):
    for bad in ("0", "1.5", "nan"):
        assert main(["peer", "--initial-peers", PEER, "--max-compute-share", bad, "--print-config"]) == 2
        err = capsys.readouterr().err
        assert "--max-compute-share must be in (0, 1]" in err and len(err.strip().splitlines()) == 1
