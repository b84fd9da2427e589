"""Beacon's curation pipeline (Apache Beam): read facts, probe the base model, embed, score, decide.

Every counter and distribution of the pipeline is in one Beam metrics namespace, ``METRICS_NS``.
"""

METRICS_NS = "beacon"
