"""One router per resource: jobs, datasets, health."""
