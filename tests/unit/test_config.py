"""Party config validation: one test per kind of bad input."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jointstats import ConfigError, load_party_config
from tests.common import party_config

GOOD = party_config()


def write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_good_config_and_relative_paths(tmp_path):
    cfg = load_party_config(write(tmp_path, GOOD))
    assert cfg.index == 0 and cfg.policy.min_count == 5
    assert cfg.state == tmp_path / "state/a.sqlite"
    assert cfg.policy.analyst_key("alice") == tmp_path / "keys/alice.pub"
    assert str(cfg.policy.budget_epsilon) == "10"


def mutate(path, value):
    import copy
    cfg = copy.deepcopy(GOOD)
    node = cfg
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return cfg


@pytest.mark.parametrize("path,value,message", [
    (("party",), None, "party: expected this party's name"),
    (("party",), "zz", "party: 'zz' is not in mpc.parties"),
    (("mpc", "parties"), [{"name": "a", "host": "127.0.0.1", "port": 1}], "expected at least 2 parties"),
    (("mpc", "parties"), [{"name": "a", "host": "127.0.0.1", "port": 1}, {"name": "a", "host": "127.0.0.1", "port": 2}], "duplicate party 'a'"),
    (("mpc", "parties"), [{"name": "a", "host": "127.0.0.1", "port": "x"}, {"name": "b", "host": "127.0.0.1", "port": 2}], "mpc.parties[0].port"),
    (("mpc", "parties"), [{"name": "a", "host": "10.0.0.1", "port": 1}, {"name": "b", "host": "10.0.0.2", "port": 2}], "mpc.tls: required"),
    (("policy", "budget", "epsilon"), -1, "policy.budget.epsilon"),
    (("policy", "min_count"), 2.5, "policy.min_count"),
    (("policy", "allow_exact"), "yes please", "policy.allow_exact"),
    (("policy", "max_epsilon_per_job"), 0, "policy.max_epsilon_per_job"),
    (("datasets", "cohort"), {"path": "x"}, "datasets.cohort.source"),
    (("colour",), "red", "colour: unknown field"),
])
def test_bad_configs(tmp_path, path, value, message):
    cfg = mutate(path, value) if path != ("colour",) else {**GOOD, "colour": "red"}
    with pytest.raises(ConfigError) as err:
        load_party_config(write(tmp_path, cfg))
    assert message in str(err.value)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read party config"):
        load_party_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("party: [a\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_party_config(bad)


@pytest.mark.parametrize("second,refused", [
    ({"source": "data/a.csv"}, True),
    ({"source": "./data/../data/a.csv"}, True),
    ({"source": "data/b.csv"}, False),
])
def test_one_dataset_per_source(tmp_path, second, refused):
    """Each dataset has its own budget: the same data under two names would give its people two."""
    cfg = {**GOOD, "datasets": {"cohort": {"source": "data/a.csv"}, "copy": second}}
    if refused:
        with pytest.raises(ConfigError, match=r"datasets.copy: reads the same data as datasets.cohort"):
            load_party_config(write(tmp_path, cfg))
    else:
        assert len(load_party_config(write(tmp_path, cfg)).datasets) == 2
