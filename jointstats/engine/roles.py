"""Party roles (data holders and compute-only parties) and what each party of a job could see.

A party's role is public: it is part of its entry in ``mpc.parties`` (``role: compute``),
the list every party of the consortium holds identically. A compute-only party holds no
data: its local step contributes zero partial aggregates of the plan's shape without
opening any data source, and it takes part in the MPC only, so that two data holders
and it form 3 parties (threshold 1): no single party sees another's partial aggregates
or the DP noise. Its policy still applies (exact mode, per-job epsilon cap, min_count
floor, the 2-party opt-in); it charges no privacy budget, since it releases nothing of
its own and offers no dataset, but it audits every job in its own hash-chained log.
"""
from __future__ import annotations

from jointstats.engine.hooks import LedgerHooks
from jointstats.consortium.config import PartyConfig, Peer
from jointstats.plan.sealed import Plan
from jointstats.plan.spec import Spec

DATA, COMPUTE = "data", "compute"


def threshold(parties: int) -> int:
    """MPyC's default threshold t = (m - 1) // 2: any t parties together learn nothing."""
    return (parties - 1) // 2


def _possessive(names: list[str]) -> str:
    """["a"] -> "a's"; ["a", "b", "c"] -> "a's, b's and c's"."""
    owned = [f"{n}'s" for n in names]
    return owned[0] if len(owned) == 1 else f"{', '.join(owned[:-1])} and {owned[-1]}"


def mpc_block(peers: tuple[Peer, ...] | list[Peer], dp: bool) -> dict:
    """The result's ``mpc`` block: which parties hold data, which only compute, the
    threshold, and in plain words what each party (and the analyst) could see.

    It depends only on the public party list and the mode, so every party writes the same.
    """
    names = [p.name for p in peers]
    t = threshold(len(peers))
    noise = ", the DP noise included" if dp else ""
    sees = {}
    for peer in peers:
        own = "its own rows and partial aggregates; " if peer.role == DATA else "no data of its own; "
        other_data = [p.name for p in peers if p.role == DATA and p.name != peer.name]
        if t == 0:
            what = (f"{other_data[0]}'s partial aggregates (not its rows)" if other_data
                    else "the other party's partial aggregates (zero: it holds no data)")
            sees[peer.name] = (own + what + " and every intermediate value of the secure step"
                               + noise + (", so the un-noised statistics too" if dp else ""))
        else:
            hidden = [f"{_possessive(other_data)} partial aggregates"] if other_data else []
            if dp:
                hidden.append("the DP noise")
            if not hidden:  # the only data holder, among compute-only parties
                hidden.append("the intermediate values")
            sees[peer.name] = (own + "of " + " and of ".join(hidden) + " only random shares: "
                               + ("no single party can learn them" if t == 1 else
                                  f"no {t} parties together can learn them")
                               + f", {t + 1} parties pooling what they see could")
    sees["analyst"] = "only the released values" + (" (with DP noise)" if dp else "")
    return {"threshold": t,
            "data_parties": [p.name for p in peers if p.role == DATA],
            "compute_parties": [p.name for p in peers if p.role == COMPUTE],
            "sees": sees}


def two_party_scope(peers: tuple[Peer, ...] | list[Peer]) -> str:
    """The DP privacy block's plain statement for a 2-party job (every party opted in)."""
    a, b = (p.name for p in peers)
    return (f"the DP guarantee holds against the analyst and outsiders only: in this 2-party job "
            f"(threshold 0, every party opted in with policy.allow_two_party) {a} and {b} each saw "
            "the other's partial aggregates and the DP noise")


def job_hooks(config: PartyConfig, spec: Spec, job_id: str, analyst: str = "local") -> LedgerHooks:
    """The ledger hooks of this party for one job: a compute-only party's charge no budget."""
    cls = ComputeOnlyHooks if config.compute_only else LedgerHooks
    return cls(config, spec, job_id, analyst=analyst)


class ComputeOnlyHooks(LedgerHooks):
    """A compute-only party's ledger and audit log around one job.

    It holds no dataset and releases nothing of its own, so it reserves and commits no
    privacy budget (its ledger stays empty); every job is still audited (start with
    ``role: compute``, reveal or failure) in its own hash-chained log.
    """

    mode = "exact"

    def before_data(self, plan: Plan) -> None:
        self.mode = plan.mode
        spec = self.spec
        self.state.audit("start", job_id=self.job_id, analyst=self.analyst, protocol=spec.name,
                         spec_sha256=spec.sha256, plan_sha256=plan.sha256, mode=plan.mode,
                         dataset=spec.dataset, role=COMPUTE)

    def before_reveal(self, plan: Plan) -> None:
        pass  # nothing reserved, nothing to commit

    def done(self, result: dict) -> None:
        self.state.audit("reveal", job_id=self.job_id, mode=self.mode, role=COMPUTE,
                         revealed={k: v.get("kind") for k, v in result.get("results", {}).items()})
