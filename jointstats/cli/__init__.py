"""The jointstats command line."""
