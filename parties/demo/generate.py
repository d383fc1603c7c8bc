"""Write the demo parties' synthetic data (data/*.csv|.parquet|.db) next to this script if missing."""
from pathlib import Path
from jointstats.cli.demo_data import ensure_demo_data
if __name__ == "__main__":
    print("\n".join(f"{p}: {f}" for p, f in ensure_demo_data(Path(__file__).resolve().parent).items()))
