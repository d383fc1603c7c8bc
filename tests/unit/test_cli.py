"""The command line: help on every option, --version, examples, exit codes, --progress."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import yaml

import jointstats
from jointstats.cli import commands as cli
from jointstats.errors import (AuditError, AuthError, BudgetError, ConfigError, DataError,
                               JointStatsError, PartyError, PeerLostError, PolicyError,
                               ReplayError, SpecError, StaleRequestError, exit_code_of)
from tests.conftest import cohort_frame, write_consortium


def _parsers(parser, path=("jointstats",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def _leaf(parser) -> bool:
    return not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def test_every_option_and_argument_has_help():
    missing = [f"{' '.join(path)} {a.dest}" for path, p in _parsers(cli.build_parser())
               for a in p._actions if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert not missing


def test_every_command_shows_an_example_and_the_exit_codes():
    leaves = [(path, p) for path, p in _parsers(cli.build_parser()) if _leaf(p)]
    assert len(leaves) >= 12
    for path, p in leaves:
        text = p.format_help()
        assert "example:\n  jointstats " in text, path
        assert "exit status:" in text and "3  refusal" in text, path
    top = cli.build_parser().format_help()
    assert "examples:" in top and "docs/spec.md" in top and "docs/reference.md" in top


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "jointstats.cli.commands", *args], capture_output=True,
                          text=True, timeout=120, **kw)


class _Done:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli_main(capsys):
    """``jointstats ARGS`` in this process (as the console script: exit status, stdout, stderr)."""
    def call(*args):
        try:
            code = cli.main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
        out = capsys.readouterr()
        return _Done(code, out.out, out.err)
    return call


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"jointstats {jointstats.__version__}"


def test_exit_codes_of_the_error_tree():
    assert exit_code_of(SpecError("x")) == exit_code_of(ConfigError("x")) == 2
    for refusal in (PolicyError, BudgetError, AuthError, ReplayError, StaleRequestError):
        assert exit_code_of(refusal("x")) == 3
    for failure in (DataError, AuditError, JointStatsError, PeerLostError):
        assert exit_code_of(failure("x")) == 1
    assert exit_code_of(ValueError("x")) == 1
    # a job that failed at another party exits as its cause there
    assert PartyError("x", cause="BudgetError").exit_code == 3
    assert PartyError("x", cause="SpecError").exit_code == 2
    assert PartyError("x", cause="PeerLostError").exit_code == 1
    assert PartyError("x", cause="InternalError").exit_code == 1
    assert PartyError("x", cause="os.system").exit_code == 1
    assert PartyError("x").exit_code == 1


@pytest.fixture
def parties(tmp_path):
    return write_consortium(tmp_path, [cohort_frame(20, s) for s in range(3)], allow_exact=False)


SPEC = """dataset: cohort
schema:
  age: {type: real, bounds: [18, 100]}
  smoker: {type: categorical, levels: ["no", "yes"]}
statistics:
  n: {kind: count}
  m: {kind: mean, column: age}
"""


def test_exit_code_2_for_usage_errors_and_invalid_specs(tmp_path, cli_main):
    proc = run_cli("run", "spec.yaml")  # --parties missing
    assert proc.returncode == 2 and "--parties" in proc.stderr
    proc = cli_main("frobnicate")
    assert proc.returncode == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.replace("column: age", "column: aeg"))
    proc = cli_main("validate", str(bad))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "statistics.m.column: unknown column 'aeg' (did you mean 'age'?)" in proc.stderr
    bad.write_text(SPEC.replace("kind: mean", "kind: maen"))
    proc = cli_main("validate", str(bad))
    assert proc.returncode == 2 and "found 'maen' (did you mean 'mean'?)" in proc.stderr


def test_exit_code_3_for_a_refusal(tmp_path, parties, cli_main):
    spec = tmp_path / "exact.yaml"
    spec.write_text(SPEC)  # exact mode; no party allows it
    proc = cli_main("validate", str(spec), "--parties", *map(str, parties))
    assert proc.returncode == 3 and proc.stderr.count("\n") == 1
    assert "refuses exact mode" in proc.stderr


def test_exit_code_1_for_a_failure(tmp_path, parties, cli_main):
    spec = tmp_path / "dp.yaml"
    # DP mode (every party allows it); a column no party's data has: a DataError
    spec.write_text(SPEC.replace("statistics:", "privacy: {epsilon: 1}\nstatistics:")
                    .replace("  smoker:", "  bloodtype: {type: categorical, levels: [A, B]}\n  smoker:"))
    proc = cli_main("validate", str(spec), "--parties", *map(str, parties))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "column 'bloodtype' missing from its data" in proc.stderr


def test_progress_option_forces_or_hides_progress(monkeypatch, tmp_path):
    seen = []

    def fake_run(spec, parties, *, out=None, progress=False, **kw):
        seen.append(progress)
        return jointstats.Result("p", "j", "s", ("a",), None, {})
    import jointstats.local.runner
    monkeypatch.setattr(jointstats.local.runner, "run", fake_run)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    for flags, expected in (([], False), (["--progress"], True), (["--no-progress"], False)):
        assert cli.main(["run", "s.yaml", "--parties", "a.yaml", *flags]) == 0
        assert seen[-1] is expected
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert cli.main(["run", "s.yaml", "--parties", "a.yaml"]) == 0 and seen[-1] is True
    assert cli.main(["run", "s.yaml", "--parties", "a.yaml", "--no-progress"]) == 0 and seen[-1] is False


def test_unknown_field_in_a_party_config_suggests_the_field(tmp_path, parties, cli_main):
    data = yaml.safe_load(parties[0].read_text())
    data["polcy"] = data.pop("policy")
    parties[0].write_text(yaml.safe_dump(data))
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    proc = cli_main("validate", str(spec), "--parties", *map(str, parties))
    assert proc.returncode == 2 and "polcy: unknown field (did you mean 'policy'?)" in proc.stderr


def test_did_you_mean_is_bounded_and_finds_the_closest():
    from jointstats.plan.spec import did_you_mean
    wide = [f"c{i:03d}_measure" for i in range(1000)]
    assert did_you_mean("c517_meassure", wide) == " (did you mean 'c517_measure'?)"
    assert did_you_mean("regoin", ["age", "region", "smoker"]) == " (did you mean 'region'?)"
    assert did_you_mean("zzzz", ["age", "region"]) == ""
    assert did_you_mean("x" * 65, ["x" * 65]) == ""  # outsiders' long names: no search
    assert did_you_mean(3, ["age"]) == "" and did_you_mean("", ["age"]) == ""
