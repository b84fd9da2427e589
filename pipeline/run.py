"""The curation pipeline, composed in one place: ReadFacts → CheckFactIds → ProbeModel → EmbedTexts →
ScoreDrift → ScoreInterference + FindCollisions → ScoreQuantiles → ApplyPolicy → WriteScored +
WriteManifest, then the commit (``pipeline.manifest``).

``curate()`` is the programmatic entry point (the CLI and the service call it); ``run()`` takes a
command line, with Beam's own options (``--runner`` ...) passed through to Beam.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import METRICS_NS
from pipeline.collisions import FindCollisions
from pipeline.config import CurateConfig
from pipeline.dead_letters import DeadLetters
from pipeline.drift import ScoreDrift
from pipeline.embed import EmbedTexts
from pipeline.fact_ids import CheckFactIds
from pipeline.interference import ScoreInterference
from pipeline.interference_index import ScoreInterferenceIndex
from pipeline.manifest import (Identity, WriteManifest, commit, commit_remote, remote_leftovers,
                               remote_staging)
from pipeline.policy import ApplyPolicy
from pipeline.probe import ProbeModel
from pipeline.quantiles import ScoreQuantiles
from pipeline.inputs import InputSpec, check_inputs
from pipeline.read_facts import ReadFacts
from pipeline.text import normalize_text
from pipeline.write import WriteScored
from schemas import Manifest
from schemas import storage
from scoring.risk import risk

log = logging.getLogger(__name__)
DEFAULT_RUNNER = "FnApiRunner"
_INTERNAL = ("emb_prompt", "emb_target", "emb_answer", "answer_empty", "conflict_with_earlier", "order")
# Scores whose distribution the manifest records; all but weight exist before the policy decides.
SCORES_BEFORE_POLICY = ("drift", "drift_sentence", "drift_lm", "drift_expected", "drift_rank",
                        "target_logprob", "target_rank", "interference", "neighbors", "shared_target", "risk")


def _order(spec_index: dict[str, int], fact: dict) -> int:
    # Input order across files: file index, then record position. Decides "earliest" fact.
    return spec_index[fact["source"]] * (1 << 40) + int(fact["position"])


def _key(order: int) -> str:
    return f"{order:016x}"


def _merge(key: str, grouped: dict, config_hash: str) -> tuple[str, dict]:
    fact = dict(grouped["fact"][0])
    fact.update(grouped["interference"][0])
    fact.update(grouped["collisions"][0])
    fact["risk"] = risk(fact["target_rank"], fact["shared_target"])
    fact["config_hash"] = config_hash
    return key, fact


def interference_stage(config: CurateConfig, spill_dir: str | None = None) -> beam.PTransform:
    """The interference search ``config.interference_index`` names; both give the same fields.
    ``spill_dir``: where the faiss stage hands its packed embeddings to its one worker (a folder on
    this machine, for runners whose workers run here), or None: through the runner."""
    thresholds = dict(neighbor_threshold=config.neighbor_threshold, conflict_threshold=config.conflict_threshold)
    if config.interference_index == "lsh":
        return ScoreInterference(**thresholds, bands=config.lsh_bands, bits=config.lsh_bits,
                                 max_bucket=config.lsh_max_bucket, seed=config.lsh_seed)
    return ScoreInterferenceIndex(**thresholds, exact_max=config.faiss_exact_max,
                                  cell_size=config.faiss_cell_size, nprobe=config.faiss_nprobe, spill_dir=spill_dir)


def build(p: beam.Pipeline, specs: list[InputSpec], staging: str, config: CurateConfig, runner: str,
          spill_dir: str | None = None) -> None:
    """Adds the whole curation graph to ``p``, writing under ``staging`` (``spill_dir``: see
    ``interference_stage``)."""
    spec_index = {spec.path: spec.source_index for spec in specs}
    read = p | "ReadFacts" >> ReadFacts(specs, config)
    keyed = read["facts"] | "KeyFacts" >> beam.Map(
        lambda f: (_key(_order(spec_index, f)), {**f, "order": _order(spec_index, f)}))
    checked = keyed | "CheckFactIds" >> CheckFactIds()
    probe = checked["facts"] | "ProbeModel" >> ProbeModel(
        config.model, batch_size=config.probe_batch_size, max_new_tokens=config.probe_max_new_tokens,
        chat_template=config.chat_template)
    embed = probe["ok"] | "EmbedTexts" >> EmbedTexts(config.encoder, batch_size=config.embed_batch_size)
    drifted = embed["ok"] | "ScoreDrift" >> ScoreDrift(config.drift_definition)

    interference = (
        drifted
        | "InterferenceInput" >> beam.MapTuple(lambda k, f: (k, {
            "embedding": f["emb_prompt"], "target_norm": normalize_text(f["target"]),
            "fact_id": f["fact_id"], "order": f["order"]}))
        | "ScoreInterference" >> interference_stage(config, spill_dir))
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
    quantiles = joined | "ScoreQuantiles" >> ScoreQuantiles(SCORES_BEFORE_POLICY)
    policy = {"facts": joined, "quantiles": quantiles} | "ApplyPolicy" >> ApplyPolicy(config)
    scored = policy["scored"] | "DropInternal" >> beam.MapTuple(
        lambda k, f: (k, {n: v for n, v in f.items() if n not in _INTERNAL}))
    weight_quantiles = scored | "WeightQuantiles" >> ScoreQuantiles(("weight",))

    rejected = (
        (read["rejected"], checked["rejected"],
         probe["failed"] | "ProbeDeadLetters" >> DeadLetters("probe"),
         embed["failed"] | "EmbedDeadLetters" >> DeadLetters("embed"))
        | "AllRejected" >> beam.Flatten())
    written = {"scored": scored, "rejected": rejected} | "WriteScored" >> WriteScored(staging)
    _ = ({"read": read["read"], "scored": written["scored"], "rejected": written["rejected"],
          "quantiles": (quantiles, weight_quantiles) | "AllQuantiles" >> beam.Flatten(),
          "thresholds": policy["thresholds"]}
         | "WriteManifest" >> WriteManifest(staging, Identity.of(specs, config, runner)))


def pipeline_options(beam_args: list[str] | None) -> PipelineOptions:
    """Beam options from the command line; the in-process FnApiRunner unless --runner is given."""
    options = PipelineOptions(beam_args or [])
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER
    return options


# Runners whose workers are processes on this machine (the portable runner only with its embedded job
# server): there one worker holding every embedding is what a user wants.
_LOCAL_RUNNERS = {"DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"}


def _local_runner(options: PipelineOptions) -> bool:
    runner = str(options.view_as(StandardOptions).runner)
    endpoint = options.get_all_options().get("job_endpoint")
    return runner.rsplit(".", 1)[-1] in _LOCAL_RUNNERS or (runner.endswith("PortableRunner") and endpoint == "embed")


def _note_one_worker_stage(config: CurateConfig, options: PipelineOptions) -> None:
    runner = str(options.view_as(StandardOptions).runner)
    if config.interference_index == "faiss" and not _local_runner(options):
        log.warning("interference_index=faiss scores every fact's neighbours on one worker of %s (~8.7 GB at "
                    "1M facts); to spread that stage over the workers pass --interference-index lsh", runner)


def _spill_folder(config: CurateConfig, options: PipelineOptions, out: Path | None) -> str | None:
    """A new folder where the faiss stage hands the embeddings to its worker (not through the runner:
    ``interference_index._Pack``): beside a local ``out``, else in the system's temp folder; None
    for the LSH stage and for runners whose workers may be elsewhere. The run removes it (a killed
    job's is removed by the job's retry, ``service.jobs``)."""
    if config.interference_index != "faiss" or not _local_runner(options):
        return None
    if out is None:
        return tempfile.mkdtemp(prefix="beacon-interference-")
    out = out.resolve()  # `--out .` too: beside the folder, never inside it
    return tempfile.mkdtemp(prefix=f".{out.name}.interference-", dir=out.parent)


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

    ``out_dir`` may be a local folder or an object-store URL (``s3://…``, ``gs://…``): locally the
    staging folder is renamed into place; on an object store the files go under a run-unique prefix
    and the manifest, written last, commits them (``pipeline.manifest.commit_remote``).

    Raises:
        ValueError: unreadable input, invalid option, or a URL scheme with no filesystem installed;
        FileExistsError: ``out_dir`` is not empty.
    """
    options = pipeline_options(beam_args)
    storage.configure(options)  # before the inputs are checked: they may be on an object store too
    try:
        return _curate(inputs, out_dir, config, options, overwrite, test_pipeline)
    finally:
        storage.reset()  # the next command in this process reads its own settings


def _curate(inputs: list[str], out_dir: str, config: CurateConfig, options: PipelineOptions, overwrite: bool,
            test_pipeline: beam.Pipeline | None) -> Manifest:
    remote = storage.is_url(out_dir)
    if remote:
        out: str | Path = storage.check_prefix(out_dir, "--out")
        leftovers = remote_leftovers(out)
        if leftovers and not overwrite:
            raise FileExistsError(f"output {out} is not empty (it holds {len(leftovers)} file(s), "
                                  f"e.g. {leftovers[0]}); pass --overwrite to replace it")
    else:
        out = Path(out_dir)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
            raise FileExistsError(f"output folder {out} exists and is not empty; pass --overwrite to replace it")
    for path in inputs:
        storage.check_location(path, "input")
    specs = check_inputs(inputs, config.format)
    runner = options.view_as(StandardOptions).runner
    _note_one_worker_stage(config, options)
    if remote:
        staging: str | Path = remote_staging(out)
        storage.check_writable(staging, "--out", shown=out)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
    spill = _spill_folder(config, options, None if remote else out)
    started = time.perf_counter()
    committed = False
    try:
        p = test_pipeline or beam.Pipeline(options=options)
        build(p, specs, str(staging), config, runner, spill)
        log.info("curating %d file(s) into %s with %s", len(specs), out, runner)
        result = p.run()
        state = result.wait_until_finish()
        if state != "DONE":
            raise RuntimeError(f"pipeline ended in state {state}")
        timings = {"total": round(time.perf_counter() - started, 3),
                   "probe_inference": round(_inference_seconds(result, "ProbeModel"), 3),
                   "embed_inference": round(_inference_seconds(result, "EmbedTexts"), 3)}
        manifest = commit_remote(staging, out, timings) if remote else commit(staging, out, timings)
        committed = True
        return manifest
    finally:
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)
        if not remote:
            shutil.rmtree(staging, ignore_errors=True)
        elif not committed and not _committed_by_manifest(out, staging):
            try:  # a failed run's files; a killed one's are removed by a later commit
                storage.delete(storage.list_files(staging))
            except Exception as e:  # noqa: BLE001 - the failure that brought us here is the news
                log.warning("could not remove the failed run's files under %s: %s", staging, e)


def _committed_by_manifest(out: str, staging: str) -> bool:
    """Whether ``out``'s manifest names files of ``staging`` (interrupted after its commit)."""
    try:
        files = Manifest.read(out).files
    except Exception:  # noqa: BLE001 - no readable manifest names nothing
        return False
    prefix = storage.relative(staging, out) + "/"
    return any(name.startswith(prefix) for names in files.values() for name in names)


def run(argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> Manifest:
    """``python -m pipeline.run INPUT... --out DIR [--config F] [--overwrite] [beam options]``."""
    from schemas.config_file import load_sections

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config")
    parser.add_argument("--overwrite", action="store_true")
    args, beam_args = parser.parse_known_args(argv)
    config = load_sections(args.config, {"curate": CurateConfig})["curate"]
    return curate(args.inputs, args.out, config, beam_args, args.overwrite, test_pipeline)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(run().model_dump_json(indent=2))
