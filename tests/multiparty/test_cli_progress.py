"""``jointstats run --progress`` prints the parties' progress lines with stderr on a pipe."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import cohort_frame

SPEC = """dataset: cohort
schema:
  age: {type: real, bounds: [18, 100]}
statistics:
  m: {kind: mean, column: age}
"""


def test_run_with_progress_on_a_pipe(consortium, tmp_path):
    parties = consortium([cohort_frame(30, s) for s in range(3)])
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)

    def run(*flags):
        return subprocess.run([sys.executable, "-m", "jointstats.cli.commands", "run", str(spec), "--parties",
                               *map(str, parties), *flags], capture_output=True, text=True, timeout=300)
    loud = run("--progress")  # (without it, and stderr not a terminal: none; tests/unit/test_cli.py)
    assert loud.returncode == 0, loud.stderr
    assert "m [mean]" in loud.stdout
    lines = [ln for ln in loud.stderr.splitlines() if ln.startswith("  party_")]
    assert {ln.split(":")[0].strip() for ln in lines} == {"party_a", "party_b", "party_c"}


def test_run_refused_by_a_party_exits_3_and_a_failure_1(consortium, tmp_path):
    """A refusal at one party (its policy) exits with 3 through the runner's PartyError, which
    carries the refusal's class; a party's failure exits with 1."""
    parties = consortium([cohort_frame(30, s) for s in range(3)], allow_exact=False)
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)  # exact mode: refused by every party's policy
    proc = subprocess.run([sys.executable, "-m", "jointstats.cli.commands", "run", str(spec), "--parties",
                           *map(str, parties)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    assert "refuses exact mode" in proc.stderr and proc.stderr.count("\n") == 1
    dp = tmp_path / "dp.yaml"
    dp.write_text(SPEC.replace("statistics:", "privacy: {epsilon: 1}\nstatistics:")
                  .replace("  age:", "  bloodtype: {type: categorical, levels: [A, B]}\n  age:"))
    proc = subprocess.run([sys.executable, "-m", "jointstats.cli.commands", "run", str(dp), "--parties",
                           *map(str, parties)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1
