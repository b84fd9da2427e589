"""Beacon's front doors: the command line, and (later) the HTTP API, job store and worker."""
