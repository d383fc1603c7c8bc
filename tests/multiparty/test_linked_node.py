"""A linked (vertical) job through running nodes (``jointstats node serve``, TLS between them and on
their APIs), submitted by an analyst: the same answers as pandas' merge + statsmodels, and a DP
linked job charged to every node's ledger for its own dataset."""
from __future__ import annotations

import yaml

from tests.common import nodes_running
from tests.multiparty.test_node import NAMES, Cluster
from tests.multiparty.test_vertical import ALL_KINDS, SCHEMA, check_all_kinds, joined, people, split

PARTS = [["age", "smoker"], ["bmi", "region", "visits"], ["sbp"]]


def _add_linked_dataset(cluster: Cluster, frames) -> None:
    for i, (path, frame, cols) in enumerate(zip(cluster.configs, frames, PARTS)):
        frame.to_csv(path.parent / "data" / "linked.csv", index=False)
        cfg = yaml.safe_load(path.read_text())
        cfg["datasets"]["linked"] = {"source": "data/linked.csv", "columns": ["pid", *cols]}
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def test_linked_jobs_through_nodes(tmp_path):
    cluster = Cluster(tmp_path)
    frames = split(people(260, 23), PARTS, seed=4)
    _add_linked_dataset(cluster, frames)
    j = joined(frames)
    with nodes_running(cluster):
        result = cluster.submit(SCHEMA % "" + ALL_KINDS, timeout=180)
        check_all_kinds(result.to_dict(), j)
        assert "the number of linked records" in result.to_dict()["mpc"]["linkage"]
        dp = cluster.submit(SCHEMA % ", rows: 260" + "privacy: {epsilon: 0.5, delta: 0}\n"
                            + "statistics:\n  n: {kind: count}\n  m: {kind: mean, column: sbp}\n",
                            timeout=180)
        assert dp.privacy is not None and abs(dp.results["n"]["value"] - len(j)) < 200
        for i in range(3):  # each node charged its own ledger, for the linked dataset only
            spent = cluster.ledger(i).usage("linked", 2.5, 1e-6).held.totals
            assert spent.jobs == 1, (NAMES[i], spent)
