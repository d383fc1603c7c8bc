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
        return subprocess.run([sys.executable, "-m", "jointstats.cli", "run", str(spec), "--parties",
                               *map(str, parties), *flags], capture_output=True, text=True, timeout=300)
    quiet = run()
    assert quiet.returncode == 0, quiet.stderr
    assert "m [mean]" in quiet.stdout and "party_a" not in quiet.stderr
    loud = run("--progress")
    assert loud.returncode == 0, loud.stderr
    lines = [ln for ln in loud.stderr.splitlines() if ln.startswith("  party_")]
    assert {ln.split(":")[0].strip() for ln in lines} == {"party_a", "party_b", "party_c"}
