"""CheckFactIds: a ``fact_id`` names one row of ``scored``, so every documented join is one row per fact.

A later record that reuses an id for another fact (another prompt or target) is rejected. Identical
records that share an id (the same fact given twice, or twice without an id, which derives the same
id from the content) are not clashes: the first keeps the id, each later copy gets its own
(``<id>~copy<k>``), and FindCollisions marks the copies ``duplicate`` of the first.
"""

from __future__ import annotations

import apache_beam as beam

from pipeline.dead_letters import dead_letter


COPY_MARK = "~copy"


def copy_id(fact_id: str, k: int) -> str:
    """The id of the ``k``-th later copy (k >= 1) of the fact ``fact_id``."""
    return f"{fact_id}{COPY_MARK}{k}"


def id_fixes_of(fact_id: str, records) -> list[tuple[str, tuple[str, str]]]:
    """(key, ("reject", error) | ("rename", new id)) for each later record (by input order) sharing ``fact_id``."""
    records = sorted(records)
    if COPY_MARK in fact_id:  # reserved: a given id like "k1~copy1" could collide with a copy's
        return [(key, ("reject", f"fact_id {fact_id!r} holds {COPY_MARK!r}, which Beacon reserves for the "
                                 "ids of copies; give the fact another id")) for _, key, _, _ in records]
    _, first_key, prompt, target = records[0]
    fixes, copies = [], 0
    for _, key, p, t in records[1:]:
        if (p, t) != (prompt, target):
            fixes.append((key, ("reject", f"fact_id {fact_id!r} is already used by an earlier record with "
                                          f"prompt {prompt!r} and target {target!r}; give each fact its own id")))
        else:
            copies += 1
            fixes.append((key, ("rename", copy_id(fact_id, copies))))
    return fixes


class _ApplyIdFixes(beam.DoFn):
    def process(self, element, fixes):
        key, fact = element
        action, value = fixes.get(key, ("keep", None))
        if action == "reject":
            yield beam.pvalue.TaggedOutput("rejected", dead_letter(fact, "validate", value))
        elif action == "rename":
            yield key, {**fact, "fact_id": value}
        else:
            yield element


class CheckFactIds(beam.PTransform):
    """(key, fact with ``order``) -> ``facts``: each with an id of its own; ``rejected``: the clashes."""

    def expand(self, keyed):
        fixes = (
            keyed
            | "ByFactId" >> beam.MapTuple(lambda k, f: (f["fact_id"], (f["order"], k, f["prompt"], f["target"])))
            | "GroupFactIds" >> beam.GroupByKey()
            | "FindIdFixes" >> beam.FlatMapTuple(id_fixes_of))
        checked = keyed | "ApplyIdFixes" >> beam.ParDo(
            _ApplyIdFixes(), beam.pvalue.AsDict(fixes)).with_outputs("rejected", main="facts")
        return {"facts": checked["facts"], "rejected": checked["rejected"]}
