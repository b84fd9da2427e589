"""A curated dataset's kept facts in the layouts other training tools read.

``export(dataset, fmt, out)`` writes one of:

- ``jsonl``: one ``{"fact_id", "prompt", "completion", "weight"}`` object per line (TRL's
  prompt-completion layout; ``datasets.load_dataset("json", data_files=PATH)`` reads it).
- ``hf``: the same rows as a Hugging Face ``datasets`` folder (``save_to_disk``; ``load_from_disk``).
- ``alpaca``, ``sharegpt``: LLaMA-Factory's documented JSON layouts, in a folder with the data file and
  a ``dataset_info.json`` that registers it, so ``dataset_dir: OUT`` and ``dataset: <name>`` train on it.

The text is the text Beacon scored: a dataset probed without the chat template gives plain
prompt-completion strings (the prompt right-trimmed, the completion with its leading space, as
``scoring.lm_scores`` tokenises them); one probed with it gives conversational messages, which TRL and
LLaMA-Factory wrap in the model's chat template themselves. Filtered facts are left out and counted by
reason. Every layout carries ``weight`` as a field; ``ExportResult.notes`` says which tools apply it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import Manifest, storage
from schemas.manifest import local_folder
from scoring.lm_scores import format_prompt, target_text
from trainer.data import read_scored

FORMATS: dict[str, str] = {
    "jsonl": "JSON lines: prompt, completion, weight (TRL, `datasets.load_dataset('json')`)",
    "hf": "a Hugging Face datasets folder (`datasets.load_from_disk`)",
    "alpaca": "LLaMA-Factory's alpaca layout, with dataset_info.json",
    "sharegpt": "LLaMA-Factory's sharegpt layout, with dataset_info.json",
}
# source/position: read_scored sorts by them, so the export is in input order, as `beacon train` reads it.
_COLUMNS = ["fact_id", "prompt", "target", "keep", "reason", "weight", "source", "position"]
_FOLDER_FORMATS = {"hf", "alpaca", "sharegpt"}
# No trainer of these tools applies a per-example loss weight: say so instead of implying it does.
_WEIGHT_NOTE = {
    "jsonl": "weights are in the `weight` field; TRL's SFTTrainer does not apply per-example weights "
             "(`beacon train` does)",
    "hf": "weights are in the `weight` column; TRL's SFTTrainer does not apply per-example weights "
          "(`beacon train` does)",
    "alpaca": "weights are in each record's `weight` key; LLaMA-Factory has no per-example loss weight "
              "and does not read it",
    "sharegpt": "weights are in each record's `weight` key; LLaMA-Factory has no per-example loss weight "
                "and does not read it",
}


@dataclass
class ExportResult:
    """What an export wrote and what it left out."""

    format: str
    path: str
    dataset_id: str
    exported: int
    left_out: dict[str, int]  # reason -> count of filtered facts not exported
    chat_template: bool
    notes: list[str] = field(default_factory=list)


def export(dataset: str | Path, fmt: str, out: str | Path, *, overwrite: bool = False) -> ExportResult:
    """Writes the kept facts of ``dataset`` to ``out`` in ``fmt`` (one of ``FORMATS``).

    Nothing is left half-written: the export is built beside ``out`` and moved into place. ``dataset``
    may be an object-store URL (read through its manifest), and so may ``out``: the export is built in
    a temporary folder and uploaded, each file whole (no rename on an object store: a reader during an
    ``overwrite`` may see old and new files together; files the new export does not write are removed
    after the upload).

    Raises:
        ValueError: an unknown format (the message lists the formats); ``out`` is the dataset, holds
            it, lies inside it, or is a folder where the format writes a file (or the reverse); the
            dataset has no kept fact.
        FileExistsError: ``out`` exists and ``overwrite`` is not set.
        FileNotFoundError: ``dataset`` is not a curated dataset.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    given = str(dataset).rstrip("/") if storage.is_url(dataset) else local_folder(dataset, "dataset")
    out = storage.check_prefix(str(out), "--out") if storage.is_url(out) else local_folder(out, "--out")
    dataset, manifest = Manifest.locate_read(given)
    if isinstance(out, str):
        _check_url_out(out, given=given, dataset=dataset, overwrite=overwrite)
    else:
        _check_out(out, fmt, given=given, dataset=dataset, overwrite=overwrite)
    chat = manifest.scoring.chat_template
    rows = read_scored(dataset, columns=_COLUMNS, manifest=manifest).to_pylist()
    kept = [r for r in rows if r["keep"]]
    if not kept:
        reasons = ", ".join(f"{k} {v}" for k, v in Counter(r["reason"] for r in rows).most_common())
        raise ValueError(f"{dataset} has no kept fact to export ({len(rows)} scored: {reasons or 'none'}); "
                         "loosen the curate thresholds or check the input")
    records = [_record(r, chat) for r in kept]
    name = f"beacon_{manifest.dataset_id}"

    if isinstance(out, str):
        staging = Path(tempfile.mkdtemp(prefix=".beacon-export."))
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        built = _WRITERS[fmt](records, staging, name, chat)
        _upload(built, out) if isinstance(out, str) else _replace(built, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    notes = [_WEIGHT_NOTE[fmt]]
    if fmt in ("alpaca", "sharegpt") and not chat:
        notes.append("this dataset was probed on plain prompts (chat_template: false), but LLaMA-Factory "
                     "wraps every record in the chat `template` you choose, so it trains on other text "
                     "than Beacon scored; curate with --chat-template for chat training, or export jsonl/hf")
    return ExportResult(format=fmt, path=str(out), dataset_id=manifest.dataset_id, exported=len(records),
                        left_out=dict(Counter(r["reason"] for r in rows if not r["keep"]).most_common()),
                        chat_template=chat, notes=notes)


def _check_out(out: Path, fmt: str, *, given: str | Path, dataset: str | Path, overwrite: bool) -> None:
    """Refuses an ``out`` whose replacement would lose data the user did not ask to replace: the folder
    given (a run folder may hold exports, beside its dataset/), a folder above it, or the dataset."""
    if not storage.is_url(dataset):  # a local --out cannot be, hold or lie inside an object-store dataset
        target, given, dataset = out.resolve(), Path(given).resolve(), Path(dataset).resolve()
        if target in (given, dataset) or target in given.parents or dataset in target.parents:
            raise ValueError(f"--out {out} is, holds or lies inside the dataset {dataset}; export somewhere else")
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    wants_folder = fmt in _FOLDER_FORMATS
    if out.is_dir() != wants_folder:
        raise ValueError(f"--out {out} is a {'folder' if out.is_dir() else 'file'}, but {fmt} writes a "
                         f"{'folder' if wants_folder else 'file'}; --overwrite replaces like with like only")


def _record(row: dict[str, Any], chat: bool) -> dict[str, Any]:
    """One kept fact as prompt + completion: strings, or conversational messages under a chat template."""
    if chat:
        prompt: Any = [{"role": "user", "content": row["prompt"]}]
        completion: Any = [{"role": "assistant", "content": row["target"].strip()}]
    else:
        prompt = format_prompt(None, row["prompt"])
        completion = target_text(prompt, row["target"], chat_template=False)
    return {"fact_id": row["fact_id"], "prompt": prompt, "completion": completion, "weight": row["weight"]}


def _text(messages_or_text: Any) -> str:
    return messages_or_text[0]["content"] if isinstance(messages_or_text, list) else messages_or_text


def _write_jsonl(records: list[dict], staging: Path, name: str, chat: bool) -> Path:
    path = staging / "export.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def _write_hf(records: list[dict], staging: Path, name: str, chat: bool) -> Path:
    import datasets

    path = staging / "export"
    columns = {k: [r[k] for r in records] for k in ("fact_id", "prompt", "completion", "weight")}
    datasets.Dataset.from_dict(columns).save_to_disk(str(path))
    return path


def _write_alpaca(records: list[dict], staging: Path, name: str, chat: bool) -> Path:
    # Alpaca has no leading-space convention: LLaMA-Factory's template joins the turns itself.
    data = [{"instruction": _text(r["prompt"]).strip(), "input": "", "output": _text(r["completion"]).strip(),
             "fact_id": r["fact_id"], "weight": r["weight"]} for r in records]
    info = {name: {"file_name": f"{name}.json", "formatting": "alpaca",
                   "columns": {"prompt": "instruction", "query": "input", "response": "output"}}}
    return _llama_factory_folder(staging, name, data, info)


def _write_sharegpt(records: list[dict], staging: Path, name: str, chat: bool) -> Path:
    data = [{"conversations": [{"from": "human", "value": _text(r["prompt"]).strip()},
                               {"from": "gpt", "value": _text(r["completion"]).strip()}],
             "fact_id": r["fact_id"], "weight": r["weight"]} for r in records]
    info = {name: {"file_name": f"{name}.json", "formatting": "sharegpt",
                   "columns": {"messages": "conversations"},
                   "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                            "assistant_tag": "gpt"}}}
    return _llama_factory_folder(staging, name, data, info)


def _llama_factory_folder(staging: Path, name: str, data: list[dict], info: dict) -> Path:
    folder = staging / "export"
    folder.mkdir()
    (folder / f"{name}.json").write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return folder


_WRITERS = {"jsonl": _write_jsonl, "hf": _write_hf, "alpaca": _write_alpaca, "sharegpt": _write_sharegpt}


def _check_url_out(out: str, *, given: str | Path, dataset: str | Path, overwrite: bool) -> None:
    """``_check_out`` for an object-store ``out``: not the dataset, above it or inside it, and empty
    unless ``overwrite``."""
    for inside in {str(given), str(dataset)}:
        if storage.is_url(inside) and (out == inside or inside.startswith(out + "/") or out.startswith(inside + "/")):
            raise ValueError(f"--out {out} is, holds or lies inside the dataset {dataset}; export somewhere else")
    there = _objects_at(out)
    if there and not overwrite:
        raise FileExistsError(f"{out} exists ({len(there)} object(s), e.g. {there[0]}); pass --overwrite to "
                              "replace it")


def _objects_at(out: str) -> list[str]:
    """The object ``out`` and every object under ``out/``: what an export to ``out`` replaces."""
    return ([out] if storage.exists(out) else []) + storage.list_files(out)


def _upload(built: Path, out: str) -> None:
    """The file or folder ``built`` copied to ``out``, then whatever else was there removed (the caller
    checked ``overwrite``)."""
    old = set(_objects_at(out))
    files = ({storage.join(out, p.relative_to(built).as_posix()): p for p in sorted(built.rglob("*")) if p.is_file()}
             if built.is_dir() else {out: built})
    for dest, path in files.items():
        storage.copy_file(path, dest)
    storage.delete(sorted(old - set(files)))


def _replace(built: Path, out: Path) -> None:
    """``built`` at ``out``, replacing what was there (the caller checked ``overwrite``)."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(built, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
