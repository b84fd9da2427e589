"""From a curated dataset (``D/manifest.json`` and the scored Parquet it names) to training examples.

An example is prompt ids + target ids (+ eos) with labels only on the target part, and the fact's
weight. Tokenisation follows ``scoring.lm_scores.encode_pair``, the one the scores were computed with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from schemas import Manifest, ScoringSpec, storage
from schemas.fact import upgrade_meta

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class DatasetInfo:
    """What identifies a curated dataset, and the scoring choices training and evaluation share."""

    path: str
    dataset_id: str
    config_hash: str
    manifest_sha256: str
    scoring: ScoringSpec
    manifest: Manifest | None = None  # the one read: its files are the ones trained on (no second read)


def read_dataset_info(dataset_dir: str | Path) -> DatasetInfo:
    """The dataset's identity and scoring choices, from its manifest (``schemas.Manifest``).

    Raises:
        FileNotFoundError: ``D/manifest.json`` is missing (D is not a curated dataset).
        ValueError: the manifest is damaged.
    """
    manifest, digest = Manifest.read_with_digest(dataset_dir)
    path = str(dataset_dir).rstrip("/") if storage.is_url(dataset_dir) else str(Path(dataset_dir).resolve())
    return DatasetInfo(path=path, dataset_id=manifest.dataset_id,
                       config_hash=manifest.config_hash, manifest_sha256=digest, scoring=manifest.scoring,
                       manifest=manifest)


def read_scored(dataset_dir: str | Path, columns: list[str] | None = None,
                manifest: Manifest | None = None) -> pa.Table:
    """Every scored row of the dataset (kept and filtered), in input order: the files its manifest
    names (``manifest``, already read, or read here), from a local folder or an object store
    (``schemas.storage``).

    Raises:
        FileNotFoundError: no manifest, or no scored Parquet file.
    """
    import pyarrow.parquet as pq

    files = (manifest or Manifest.read(dataset_dir)).data_files(dataset_dir, "scored")
    if not files:
        raise FileNotFoundError(f"no scored Parquet in {dataset_dir}; run `beacon curate` first")

    def read(path: str) -> pa.Table:
        if not storage.is_url(path):
            return pq.read_table(path, columns=columns)
        with storage.open_read(path) as f:  # Beam's filesystem: one read, then pyarrow in memory
            return pq.read_table(pa.BufferReader(f.read()), columns=columns)
    # upgrade_meta: a dataset curated before meta became key/value structs reads the same.
    table = pa.concat_tables([upgrade_meta(read(f)) for f in files], promote_options="default")
    if "source" in table.column_names and "position" in table.column_names:
        table = table.sort_by([("source", "ascending"), ("position", "ascending")])
    return table


@dataclass(frozen=True)
class Example:
    fact_id: str
    input_ids: list[int]
    labels: list[int]
    weight: float


def build_examples(rows: list[dict[str, Any]], tokenizer: Any, *, chat_template: bool, add_eos: bool,
                   max_seq_len: int, use_weights: bool = True) -> list[Example]:
    """One example per row: loss on the target tokens (and eos), the prompt masked.

    Raises:
        ValueError: a fact does not fit in ``max_seq_len`` (the target would be cut), or has an
            empty/negative weight.
    """
    from scoring.lm_scores import encode_pair

    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise ValueError("add_eos is set but the tokenizer has no eos token; set add_eos: false")
    examples, split = [], 0
    for row in rows:
        prompt_ids, target_ids = encode_pair(tokenizer, row["prompt"], row["target"],
                                             chat_template=chat_template)
        if add_eos:
            target_ids = target_ids + [eos]
        n = len(prompt_ids) + len(target_ids)
        if n > max_seq_len:
            raise ValueError(
                f"fact {row['fact_id']}: prompt ({len(prompt_ids)} tokens) + target ({len(target_ids)}) "
                f"= {n} > max_seq_len={max_seq_len}; raise max_seq_len rather than cut the target")
        weight = float(row.get("weight", 1.0)) if use_weights else 1.0
        if not weight >= 0.0:
            raise ValueError(f"fact {row['fact_id']}: weight must be >= 0, got {weight}")
        if not chat_template and _joint_differs(tokenizer, row["prompt"], row["target"],
                                                prompt_ids + target_ids[:len(target_ids) - add_eos]):
            split += 1
        examples.append(Example(row["fact_id"], prompt_ids + target_ids,
                                [IGNORE_INDEX] * len(prompt_ids) + target_ids, weight))
    if split:
        # Expected for some tokenizers at the prompt/target seam; the parts are what generation sees.
        log.warning("%d of %d facts tokenise differently joined than as prompt + target; training "
                    "uses prompt + target, as generation sees them", split, len(rows))
    return examples


def _joint_differs(tokenizer: Any, prompt: str, target: str, parts: list[int]) -> bool:
    from scoring.lm_scores import format_prompt, target_text

    text = format_prompt(tokenizer, prompt)
    return list(tokenizer(text + target_text(text, target, False))["input_ids"]) != parts


class ExampleDataset:
    """A map-style torch dataset of examples (kept as plain lists; the collator makes tensors)."""

    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        return {"input_ids": ex.input_ids, "labels": ex.labels, "weight": ex.weight, "index": i}


class WeightedCollator:
    """Right-pads a batch and keeps ``weight`` and the examples' ``fact_index`` (the default collators
    and column pruning drop them)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for r, f in enumerate(features):
            n = len(f["input_ids"])
            ids[r, :n] = torch.tensor(f["input_ids"])
            labels[r, :n] = torch.tensor(f["labels"])
            mask[r, :n] = 1
        weight = torch.tensor([float(f.get("weight", 1.0)) for f in features], dtype=torch.float32)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "weight": weight}
        if all("index" in f for f in features):  # which examples these are: the trace's fact ids
            batch["fact_index"] = torch.tensor([int(f["index"]) for f in features], dtype=torch.long)
        return batch
