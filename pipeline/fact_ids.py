"""CheckFactIds: a ``fact_id`` names one fact; a later record that reuses it for another fact is rejected.

The trainer's evaluation joins on ``fact_id``. Identical records that share an id are not clashes:
they are scored, and the later ones marked ``duplicate``.
"""

from __future__ import annotations

import apache_beam as beam

from pipeline.dead_letters import dead_letter


def id_clashes_of(fact_id: str, records) -> list[tuple[str, str]]:
    """(key, error) for each later record (by input order) that reuses ``fact_id`` for another fact."""
    _, first_key, prompt, target = min(records)
    return [(key, f"fact_id {fact_id!r} is already used by an earlier record with prompt {prompt!r} "
                  f"and target {target!r}; give each fact its own id")
            for order, key, p, t in records if key != first_key and (p, t) != (prompt, target)]


class _SplitIdClashes(beam.DoFn):
    def process(self, element, clashes):
        key, fact = element
        if key in clashes:
            yield beam.pvalue.TaggedOutput("rejected", dead_letter(fact, "validate", clashes[key]))
        else:
            yield element


class CheckFactIds(beam.PTransform):
    """(key, fact with ``order``) -> ``facts``: those whose id is theirs; ``rejected``: the clashes."""

    def expand(self, keyed):
        clashes = (
            keyed
            | "ByFactId" >> beam.MapTuple(lambda k, f: (f["fact_id"], (f["order"], k, f["prompt"], f["target"])))
            | "GroupFactIds" >> beam.GroupByKey()
            | "FindIdClashes" >> beam.FlatMapTuple(id_clashes_of))
        checked = keyed | "SplitIdClashes" >> beam.ParDo(
            _SplitIdClashes(), beam.pvalue.AsDict(clashes)).with_outputs("rejected", main="facts")
        return {"facts": checked["facts"], "rejected": checked["rejected"]}
