"""A party's ledger and audit around one job: reserve before data moves, commit before the reveal."""
from __future__ import annotations

from jointstats.plan.accounting import JobCharge
from jointstats.consortium.config import PartyConfig
from jointstats.plan.sealed import Plan
from jointstats.plan.spec import Spec


def job_charge_of(spec: Spec, plan: Plan) -> JobCharge:
    """The privacy charge of a DP job: the plan's ``privacy["charge"]`` (exact fraction strings).

    A plan without one (made before the plan carried its charge) is charged the spec's
    (epsilon, delta) as a legacy charge, which the lifetime rule treats conservatively.
    """
    if plan.charge is not None:
        return plan.charge
    return JobCharge(spec.privacy.epsilon, spec.privacy.delta, None, 0)


class LedgerHooks:
    """Ties one job of one party to that party's durable state (``state:`` of its config)."""

    def __init__(self, config: PartyConfig, spec: Spec, job_id: str, analyst: str = "local"):
        from jointstats.ledger.state import NodeState
        config.state.parent.mkdir(parents=True, exist_ok=True)
        self.state = NodeState(config.state)
        if self.state.jobs("reserved"):
            # A job of this party died before its commit (one job runs at a time per party):
            # its reservation was never revealed on, so give it back before starting anew.
            self.state.recover()
        self.config = config
        self.spec = spec
        self.job_id = job_id
        self.analyst = analyst
        self.reserved = False
        self.agreement = None   # the data-use agreement the job runs under (before_data)
        self.exclusion = None   # consent withdrawals in force at the start (before_data)

    def before_data(self, plan: Plan) -> None:
        """Audit the start; check the policy and find the data-use agreement (PolicyError,
        audited, if none covers the job); note the consent withdrawals in force; in DP mode
        reserve the job's budget, in the agreement's sub-budget too (BudgetError if it does
        not fit)."""
        from jointstats.ledger.consent import load_exclusion
        from jointstats.errors import PolicyError
        from jointstats.consortium.policy import check_job
        spec, pol = self.spec, self.config.policy
        self.state.audit("start", job_id=self.job_id, analyst=self.analyst, protocol=spec.name,
                         spec_sha256=spec.sha256, plan_sha256=plan.sha256, mode=plan.mode,
                         dataset=spec.dataset, purpose=spec.purpose)
        try:
            self.agreement = check_job(self.config, spec, plan, self.analyst)
        except PolicyError as exc:
            self.state.audit("refusal", job_id=self.job_id, analyst=self.analyst,
                             reason="policy", detail=str(exc)[:500])
            raise
        self._check_approval()
        self.exclusion = load_exclusion(self.config, spec.dataset)
        if self.exclusion is not None:  # this party's own log only
            self.state.audit("consent", job_id=self.job_id, dataset=spec.dataset,
                             withdrawals_in_force=len(self.exclusion.ids))
        if spec.privacy is not None:
            a = self.agreement
            self.state.reserve(self.job_id, spec.dataset, job_charge_of(spec, plan),
                               pol.budget_epsilon, pol.budget_delta,
                               analyst=self.analyst, spec_sha256=spec.sha256,
                               agreement=None if a is None else (a.id, a.budget_epsilon, a.budget_delta))
            self.reserved = True

    def _check_approval(self) -> None:
        """A job this party's rules make wait for an officer runs only with an approval the
        node recorded for it (``jointstats.consortium.approval``); a local run has none: refused."""
        from jointstats.consortium.agreements import approval_reasons
        from jointstats.engine.report import approvals_of
        from jointstats.errors import PolicyError
        wait = approval_reasons(self.config, self.spec, self.agreement)
        if wait and not any(d.get("decision") == "approved"
                            for d in approvals_of(self.config, self.job_id)):
            reason = (f"party {self.config.party!r} refuses: the job needs a compliance officer's "
                      f"approval ({'; '.join(wait)}); submit it to the nodes")
            self.state.audit("refusal", job_id=self.job_id, analyst=self.analyst,
                             reason="approval", detail=reason)
            raise PolicyError(reason)

    def before_reveal(self, plan: Plan) -> None:
        """Commit the reserved budget: from here on the job counts as spent."""
        if self.reserved:
            self.state.commit(self.job_id)

    def done(self, result: dict) -> None:
        """Record what was revealed (kinds and epsilon, never values)."""
        if self.reserved:
            self.state.mark_done(self.job_id, result.get("results", {}))
        else:
            self.state.audit("reveal", job_id=self.job_id, mode="exact",
                             agreement=None if self.agreement is None else self.agreement.id,
                             revealed={k: v.get("kind") for k, v in result.get("results", {}).items()})

    def failed(self, reason: str) -> None:
        """Release a reserved budget (or keep a committed one) and audit the failure."""
        self.state.fail(self.job_id, reason)

    def close(self) -> None:
        """Close the state database."""
        self.state.close()
