"""The long-running party node: its HTTP service and the analyst's client."""
