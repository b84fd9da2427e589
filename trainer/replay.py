"""Replay prompts for locality preservation: prompts that are *not* the facts being taught, on which the
adapted model should keep answering as the base model does.

With ``locality_weight`` > 0 every micro-batch carries ``replay_batch_size`` replay rows: the prompt
followed by the base model's own greedy continuation (computed once, before training). The loss adds
``locality_weight`` x KL(base || adapted) of the next-token distributions at the positions that
predict that continuation; the base distribution comes from the same model with its adapter disabled
(peft's ``disable_adapter()``), so no second model is held in memory.

Where the prompts come from, in this order:

1. ``replay: FILE`` (``--replay FILE``): a ``.txt`` file (one prompt per line) or ``.jsonl`` (one
   ``{"prompt": ...}`` object per line). Empty, unreadable, or holding a prompt that is being taught
   or evaluated: an error naming the file and the count.
2. Otherwise, the taught prompts' own templates filled with *other* facts' subjects ("The mother
   tongue of {subject of fact A} is" becomes "The mother tongue of {subject of fact B} is"): the same
   relations about other entities, which is what locality means. Needs facts with a ``subject`` that
   occurs in their prompt.
3. Topped up, when (2) gives fewer than ``MIN_REPLAY`` prompts, by generic prefixes shipped with
   Beacon (``trainer/replay_generic.txt``).

Whatever the source, a replay prompt is never a prompt of the dataset: not a taught prompt, nor any
fact's paraphrase or locality prompt (the evaluation's), so the evaluation measures prompts training
never saw (``replay_prompts`` drops them from (2) and (3), and refuses them in (1)).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MIN_REPLAY = 32  # fewer subject-swapped prompts than this: topped up with the generic prefixes
MAX_REPLAY = 2048  # more are not needed: a run sees replay_batch_size of them per micro-batch
CONTINUATION_TOKENS = 4  # base-model tokens after each replay prompt whose distributions are kept
GENERIC_FILE = Path(__file__).with_name("replay_generic.txt")


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def dataset_prompts(facts: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """(taught-or-fact prompts, evaluation prompts) of every scored fact, normalised for comparison."""
    own = {_norm(f["prompt"]) for f in facts}
    evaluation = {_norm(p) for f in facts for p in (f.get("paraphrases") or [])}
    evaluation |= {_norm(lp["prompt"]) for f in facts for lp in (f.get("locality") or [])}
    return own, evaluation


def replay_prompts(facts: list[dict[str, Any]], taught: list[dict[str, Any]], *, path: str | None,
                   seed: int) -> tuple[list[str], str]:
    """The replay prompts of a run and where they came from ("file", "subjects", "subjects+generic").

    Args:
        facts: every scored fact of the dataset (kept or not): none of their prompts is replayed.
        taught: the rows being trained (prompt, subject; paraphrase rows included).

    Raises:
        ValueError: the file is unreadable or empty, or holds taught or evaluation prompts (counted).
    """
    own, evaluation = dataset_prompts(facts)
    own |= {_norm(r["prompt"]) for r in taught}
    if path is not None:
        prompts = read_replay_file(path)
        clash = [p for p in prompts if _norm(p) in own]
        if clash:
            raise ValueError(f"replay file {path}: {len(clash)} of {len(prompts)} prompts are prompts of the "
                             f"dataset's facts (e.g. {clash[0]!r}); replay must be other prompts")
        seen = [p for p in prompts if _norm(p) in evaluation]
        if seen:
            raise ValueError(f"replay file {path}: {len(seen)} of {len(prompts)} prompts are the dataset's "
                             f"paraphrase or locality prompts (e.g. {seen[0]!r}), which the evaluation "
                             "measures; remove them")
        return prompts[:MAX_REPLAY], "file"
    excluded = own | evaluation
    subjects = {f["fact_id"]: f.get("subject") for f in facts}  # rows built without one take the fact's
    prompts = subject_swaps([{**r, "subject": r.get("subject") or subjects.get(r.get("fact_id"))}
                             for r in taught], excluded, seed)
    source = "subjects"
    if len(prompts) < MIN_REPLAY:
        taken = {_norm(p) for p in prompts}
        generic = [p for p in read_replay_file(str(GENERIC_FILE)) if _norm(p) not in excluded | taken]
        prompts += generic
        source = "subjects+generic" if taken else "generic"
    if not prompts:
        raise ValueError("no replay prompt is left once the dataset's own prompts are excluded; "
                         "give one with --replay FILE")
    return prompts[:MAX_REPLAY], source


def subject_swaps(rows: list[dict[str, Any]], excluded: set[str], seed: int) -> list[str]:
    """One prompt per row with a subject in its prompt: its template filled with another row's subject."""
    templates = [(r["prompt"], r["subject"]) for r in rows
                 if (r.get("subject") or "").strip() and r["subject"] in r["prompt"]]
    subjects = sorted({s for _, s in templates})
    if len(subjects) < 2:
        return []
    rng = np.random.default_rng([seed, 2])
    out, taken = [], set(excluded)
    for prompt, subject in templates:
        for j in rng.permutation(len(subjects))[:8]:  # a few tries for a swap no fact already holds
            other = subjects[j]
            if other == subject:
                continue
            candidate = prompt.replace(subject, other)
            if _norm(candidate) not in taken:
                taken.add(_norm(candidate))
                out.append(candidate)
                break
        if len(out) >= MAX_REPLAY:
            break
    return out


def read_replay_file(path: str) -> list[str]:
    """Prompts of a ``.txt`` (one per line, blank lines skipped) or ``.jsonl`` (``{"prompt": ...}``) file.

    Raises:
        ValueError: unreadable, not UTF-8, a JSONL line without a text ``prompt``, or no prompt at all.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"replay file {path} cannot be read: {e}") from None
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if path.endswith(".jsonl"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"replay file {path} line {n} is not JSON: {e}") from None
            prompt = record.get("prompt") if isinstance(record, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"replay file {path} line {n}: expected an object with a text 'prompt', "
                                 f"got {line[:80]!r}")
            prompts.append(prompt.strip())
        else:
            prompts.append(line.strip())
    if not prompts:
        raise ValueError(f"replay file {path} holds no prompts (0 non-blank lines)")
    return prompts


@dataclass
class ReplaySet:
    """Replay rows ready for the forward pass: prompt + base continuation ids, and which positions'
    next-token distributions the KL term compares (those that predict the continuation)."""

    ids: list[list[int]]
    positions: list[list[int]]
    source: str
    order: list[int]  # a seeded permutation: micro-batch m of process p takes the next slice of it

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, draw: int, size: int) -> list[int]:
        """The replay rows of the ``draw``-th replay micro-batch (deterministic: resume-safe)."""
        start = draw * size
        return [self.order[(start + j) % len(self.order)] for j in range(size)]

    def batch(self, rows: list[int], pad_id: int) -> dict[str, Any]:
        import torch

        width = max(len(self.ids[r]) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        kl = torch.zeros((len(rows), width), dtype=torch.bool)
        for k, r in enumerate(rows):
            n = len(self.ids[r])
            ids[k, :n] = torch.tensor(self.ids[r])
            mask[k, :n] = 1
            kl[k, self.positions[r]] = True
        return {"input_ids": ids, "attention_mask": mask, "kl_mask": kl}


def build_replay(model: Any, tokenizer: Any, prompts: list[str], *, chat_template: bool, source: str,
                 seed: int, max_seq_len: int, batch_size: int = 16) -> ReplaySet:
    """Encode the prompts and append the base model's greedy continuation (call before LoRA is added).

    Raises:
        ValueError: prompts of a replay file do not fit ``max_seq_len`` with their continuation
            (the default prompts that do not fit are left out).
    """
    from scoring.lm_scores import encode_prompt, greedy_answers

    too_long = [p for p in prompts
                if len(encode_prompt(tokenizer, p, chat_template=chat_template)) + CONTINUATION_TOKENS > max_seq_len]
    if too_long and source == "file":
        raise ValueError(f"replay file: {len(too_long)} of {len(prompts)} prompts do not fit max_seq_len="
                         f"{max_seq_len} with {CONTINUATION_TOKENS} continuation tokens (e.g. {too_long[0][:80]!r})")
    prompts = [p for p in prompts if p not in set(too_long)]
    if not prompts:
        raise ValueError(f"no replay prompt fits max_seq_len={max_seq_len}")

    answers = greedy_answers(model, tokenizer, prompts, CONTINUATION_TOKENS, batch_size,
                             chat_template=chat_template)
    ids, positions = [], []
    for prompt, answer in zip(prompts, answers):
        prompt_ids = encode_prompt(tokenizer, prompt, chat_template=chat_template)
        answer = answer or [tokenizer.eos_token_id or 0]
        ids.append(prompt_ids + answer)
        # position t predicts token t + 1: the last prompt token through the last-but-one answer token
        positions.append(list(range(len(prompt_ids) - 1, len(prompt_ids) + len(answer) - 1)))
    order = np.random.default_rng([seed, 3]).permutation(len(ids)).tolist()
    log.info("locality replay: %d prompts (%s), %d continuation tokens each", len(ids), source,
             CONTINUATION_TOKENS)
    return ReplaySet(ids=ids, positions=positions, source=source, order=order)


def kl_to_base(logits: Any, base_logits: Any, kl_mask: Any) -> Any:
    """Mean over the masked positions of KL(base || adapted) of the next-token distributions."""
    import torch
    import torch.nn.functional as F

    if not kl_mask.any():
        return logits.sum() * 0.0
    adapted = F.log_softmax(logits[kl_mask].float(), dim=-1)
    base = F.log_softmax(base_logits[kl_mask].float(), dim=-1)
    return torch.sum(base.exp() * (base - adapted), dim=-1).mean()
