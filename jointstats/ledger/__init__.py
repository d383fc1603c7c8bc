"""Each node's durable state: the privacy ledger, the tamper-evident audit log and the hooks the engine calls."""
