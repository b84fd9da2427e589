"""Beacon's front doors: the command line, the HTTP API, the job store and the worker."""
