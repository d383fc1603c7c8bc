"""Running a job on one machine: the runner behind jointstats.run/validate and the party launcher."""
