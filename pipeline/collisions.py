"""FindCollisions: facts that share a normalised target, and exact duplicates (same prompt and target).

Exact equality of normalised strings, not LSH: grouping by a string key is already linear.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline import METRICS_NS

# Counted where the duplicates are found; the namespace every Beacon stage uses.
_DUPLICATES = Metrics.counter(METRICS_NS, "collisions_duplicates")


def _shared_target(element):
    """(target_norm, members) -> (key, ('shared', how many other facts have that target))."""
    _, members = element
    keys = [key for key, _, _ in members]
    for key in keys:
        yield key, ("shared", len(keys) - 1)


def _duplicates(element):
    """((prompt_norm, target_norm), members) -> (key, ('dup', earliest fact_id or None))."""
    _, members = element
    members = list(members)
    # Earliest by order; fact_id then key break ties so exactly one fact of a group is the original.
    first_key, first_id, _ = min(members, key=lambda m: (m[2], m[1], m[0]))
    for key, _, _ in members:
        if key == first_key:
            yield key, ("dup", None)
        else:
            _DUPLICATES.inc()
            yield key, ("dup", first_id)


class _MergeCollisions(beam.CombineFn):
    """The two partials of one fact -> {'shared_target', 'duplicate_of'}."""

    def create_accumulator(self):
        return {"shared_target": 0, "duplicate_of": None}

    def add_input(self, acc, partial):
        kind, value = partial
        if kind == "shared":
            acc["shared_target"] = value
        else:
            acc["duplicate_of"] = value
        return acc

    def merge_accumulators(self, accs):
        merged = self.create_accumulator()
        for acc in accs:
            merged["shared_target"] = max(merged["shared_target"], acc["shared_target"])
            merged["duplicate_of"] = merged["duplicate_of"] or acc["duplicate_of"]
        return merged

    def extract_output(self, acc):
        return dict(acc)


class FindCollisions(beam.PTransform):
    """(key, {'prompt_norm', 'target_norm', 'fact_id', 'order'}) -> (key, collisions).

    Outputs exactly one ``{'shared_target': int, 'duplicate_of': str | None}`` per input key:
    ``shared_target`` counts the OTHER facts with the same normalised target; ``duplicate_of`` is
    the fact_id of the earliest fact (by order, then fact_id) with the same normalised prompt and
    target, None for that earliest fact itself and for facts without a duplicate. Keys must be unique.
    """

    def expand(self, facts):
        slim = facts | "Slim" >> beam.Map(
            lambda kv: (kv[0], kv[1]["prompt_norm"], kv[1]["target_norm"], kv[1]["fact_id"],
                        int(kv[1]["order"])))
        shared = (slim
                  | "ByTarget" >> beam.Map(lambda f: (f[2], (f[0], f[3], f[4])))
                  | "GroupTarget" >> beam.GroupByKey()
                  | "CountShared" >> beam.FlatMap(_shared_target))
        dups = (slim
                | "ByPromptTarget" >> beam.Map(lambda f: ((f[1], f[2]), (f[0], f[3], f[4])))
                | "GroupPromptTarget" >> beam.GroupByKey()
                | "FindDuplicates" >> beam.FlatMap(_duplicates))
        # Every key is in exactly one group of each kind, so the merge sees both partials.
        return ((shared, dups)
                | "FlattenPartials" >> beam.Flatten()
                | "MergePerFact" >> beam.CombinePerKey(_MergeCollisions()))

