"""Benchmark: the whole curation pipeline vs. the bare model calls it cannot avoid.

(a) facts/s of ``beacon curate`` (Beam FnApiRunner, everything: read, probe, embed, scores, policy,
    Parquet, manifest) against the bare calls on the same facts in the same process run: load the
    LM + encoder, batched greedy generation with HF ``generate``, one teacher-forced scoring forward
    of prompt + target (what the target's log-prob, rank and expected-embedding drift need), and
    sentence encoding of prompt/target/answer.
(b) the interference stage alone at 10k and 100k facts vs exact all-pairs: ``bench/interference.py``.

    .venv/bin/python bench/curate.py --data ../shared/data/counterfact-val.json --n 1000 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_facts(path: str, n: int) -> list[dict]:
    records = json.loads(Path(path).read_text())
    return records[:n]


def bare_calls(records: list[dict], config) -> dict:
    """Just the models: what any tool would pay to get the same answers and embeddings."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scoring.models import resolve_encoder, resolve_lm
    from scoring.drift import answer_head, clean_answer
    from scoring.lm_scores import decode_answer, greedy_answers, score_targets

    started, cpu = time.perf_counter(), time.process_time()
    path = resolve_lm(config.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    encoder = SentenceTransformer(resolve_encoder(config.encoder), device="cpu")
    loaded = time.perf_counter()
    prompts = [r["prompt"] for r in records]
    answers: list[str] = []
    bs = config.probe_batch_size
    for i in range(0, len(prompts), bs):
        ids = greedy_answers(model, tokenizer, prompts[i:i + bs], config.probe_max_new_tokens, bs)
        answers += [clean_answer(decode_answer(tokenizer, x)) for x in ids]
    generated = time.perf_counter()
    score_targets(model, tokenizer, prompts, [r["target_new"] for r in records], bs)
    scored = time.perf_counter()
    texts = prompts + [r["target_new"] for r in records] + [answer_head(a, r["target_new"]) for a, r in zip(answers, records)]
    encoder.encode(texts, batch_size=config.embed_batch_size, normalize_embeddings=True, show_progress_bar=False)
    done = time.perf_counter()
    return {"total_s": done - started, "cpu_s": time.process_time() - cpu, "load_s": loaded - started,
            "generate_s": generated - loaded, "score_s": scored - generated, "encode_s": done - scored}


def pipeline_run(data: str, n: int, config, workdir: Path) -> dict:
    from pipeline.run import curate

    subset = workdir / "facts.json"
    subset.write_text(json.dumps(load_facts(data, n)))
    started, cpu = time.perf_counter(), time.process_time()
    manifest = curate([str(subset)], str(workdir / "curated"), config, overwrite=True)
    return {"total_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu,
            "manifest_timings": manifest.timings,
            "scored": manifest.counts.scored, "rejected": manifest.counts.rejected}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/counterfact-val.json")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both arms (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from pipeline.config import CurateConfig

    config = CurateConfig()
    records = load_facts(args.data, args.n)
    workdir = Path(tempfile.mkdtemp(prefix="beacon-bench-"))
    try:
        # Bare calls first, then the pipeline: the converted model is cached before either runs.
        from scoring.models import prepare_bundled
        prepare_bundled()
        bare = bare_calls(records, config)
        pipe = pipeline_run(args.data, args.n, config, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    n = len(records)
    result = {
        "facts": n, "cpus": os.cpu_count(), "torch_threads": args.threads or "default",
        "bare": bare, "pipeline": pipe,
        "bare_facts_per_s": n / bare["total_s"], "pipeline_facts_per_s": n / pipe["total_s"],
        "ratio_pipeline_over_bare": pipe["total_s"] / bare["total_s"],
        "cpu_ratio_pipeline_over_bare": pipe["cpu_s"] / bare["cpu_s"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "curate.json").write_text(json.dumps(result, indent=2))
    print("| arm | wall s | CPU s | facts/s |\n|---|---|---|---|")
    print(f"| bare model calls (load + generate + score + encode) | {bare['total_s']:.1f} | {bare['cpu_s']:.1f} | {result['bare_facts_per_s']:.1f} |")
    print(f"| beacon curate (whole pipeline) | {pipe['total_s']:.1f} | {pipe['cpu_s']:.1f} | {result['pipeline_facts_per_s']:.1f} |")
    print(f"\npipeline / bare = {result['ratio_pipeline_over_bare']:.2f}x wall, "
          f"{result['cpu_ratio_pipeline_over_bare']:.2f}x CPU  (target <= 1.2x)")
    print(f"bare breakdown: load {bare['load_s']:.1f}s, generate {bare['generate_s']:.1f}s, "
          f"score {bare['score_s']:.1f}s, encode {bare['encode_s']:.1f}s")
    print(f"pipeline timings: {pipe['manifest_timings']}")


if __name__ == "__main__":
    main()
