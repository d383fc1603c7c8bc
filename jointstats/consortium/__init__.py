"""Who takes part and what each allows: party configuration, policy checks, keys and TLS."""
