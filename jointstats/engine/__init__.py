"""One party's job: data sources, the local step, the exact secure statistics and the release (DP post-processing)."""
