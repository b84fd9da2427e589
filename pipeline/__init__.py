"""Beacon's curation pipeline (Apache Beam): read facts, probe the base model, embed, score, decide."""
