"""What a causal LM says about (prompt, target) pairs: the torch math the pipeline and the trainer share.

One definition of each score, used before training (pipeline/probe.py) and after it (trainer/evaluate.py),
so "drift after training" means what the dataset's drift meant (the drift definitions themselves are
in ``scoring.drift``):

- ``target_logprob``: mean log p(target token | prompt, earlier target tokens), teacher forced.
- ``target_rank``: rank of the first target token in p(. | prompt); 1 = the model's top choice.
- ``drift_expected``: 1 - cos(sum_v p(v | prompt) E[v], E[first target token]), E the LM's input
  embedding matrix: how far the model's expected next token is from the target, smooth and immune to
  junk greedy answers.
- ``drift_rank``: log(target_rank) / log(vocabulary size), in [0, 1]: 0 = the model's top choice,
  1 = its last. How far down the model's own list the target starts; on CounterFact it predicts
  "not learned yet" better than the embedding distances (BENCHMARKS.md, knowledge benchmark).
- ``mean_embedding_distance`` (drift_lm): 1 - cos of the mean input embeddings of two texts.

Tokenisation is part of the definition: the target is tokenised on its own, with a leading space after a
plain prompt (``" Sega"``, not ``"Sega"``), the prompt's trailing spaces moved onto it; with the chat
template the answer starts the assistant turn without one. Training (trainer/data.py) uses the same
``encode_pair``. Importable without torch: it is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

from scoring.drift import expected_drift, first_token_rank, rank_drift

__all__ = [
    "format_prompt", "target_text", "encode_prompt", "encode_pair", "score_targets", "greedy_answers",
    "decode_answer", "token_agreement", "mean_embedding_distance", "probe", "vocab_size",
]


# --- tokenisation ----------------------------------------------------------------------------------

def format_prompt(tokenizer: Any, prompt: str, *, chat_template: bool = False) -> str:
    """The text the model sees before the answer: the chat-wrapped question, or the prompt, right-trimmed."""
    if chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             add_generation_prompt=True, tokenize=False)
    return prompt.rstrip(" ")


def target_text(prompt_text: str, target: str, chat_template: bool) -> str:
    """The target as it follows ``prompt_text``: with a leading space after a plain prompt."""
    target = target.strip()
    if chat_template or not prompt_text or prompt_text[-1].isspace():
        return target
    return " " + target


def encode_prompt(tokenizer: Any, prompt: str, *, chat_template: bool = False) -> list[int]:
    """Token ids of the prompt as generation sees it (bos only where the tokenizer adds one itself)."""
    text = format_prompt(tokenizer, prompt, chat_template=chat_template)
    return list(tokenizer(text, add_special_tokens=not chat_template)["input_ids"])


def encode_pair(tokenizer: Any, prompt: str, target: str, *,
                chat_template: bool = False) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids), each tokenised on its own so the prompt part equals what generation sees.

    Raises:
        ValueError: the target tokenises to nothing.
    """
    text = format_prompt(tokenizer, prompt, chat_template=chat_template)
    prompt_ids = list(tokenizer(text, add_special_tokens=not chat_template)["input_ids"])
    target_ids = list(tokenizer(target_text(text, target, chat_template),
                                add_special_tokens=False)["input_ids"])
    if not target_ids:
        raise ValueError(f"target {target!r} tokenises to no tokens")
    return prompt_ids, target_ids


def _encode_pairs(tokenizer: Any, prompts: Sequence[str], targets: Sequence[str],
                  chat_template: bool) -> tuple[list[list[int]], list[list[int]]]:
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    pairs = [encode_pair(tokenizer, p, t, chat_template=chat_template) for p, t in zip(prompts, targets)]
    return [p for p, _ in pairs], [t for _, t in pairs]


# --- teacher-forced scores -------------------------------------------------------------------------

def score_targets(model: Any, tokenizer: Any, prompts: Sequence[str], targets: Sequence[str],
                  batch_size: int = 16, *, chat_template: bool = False,
                  desc: str | None = None) -> dict[str, np.ndarray]:
    """Teacher-forced target scores in one pass: ``target_logprob``, ``target_rank``, ``drift_rank``,
    ``drift_expected``."""
    prompt_ids, target_ids = _encode_pairs(tokenizer, prompts, targets, chat_template)
    n = len(prompt_ids)
    out = {"target_logprob": np.zeros(n), "target_rank": np.zeros(n, dtype=np.int64),
           "drift_expected": np.zeros(n)}
    for i, row in _teacher_forced(model, prompt_ids, target_ids, batch_size, tokenizer, desc,
                                  first_token=True):
        out["target_logprob"][i] = row["logprobs"].mean()
        out["target_rank"][i] = row["rank"]
        out["drift_expected"][i] = row["expected_distance"]
    out["drift_rank"] = rank_drift(out["target_rank"], vocab_size(model))
    return out


def vocab_size(model: Any) -> int:
    """Rows of the LM's output layer: the number of tokens a rank can range over."""
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)


def token_agreement(model: Any, tokenizer: Any, prompts: Sequence[str],
                    continuations: Sequence[Sequence[int]], batch_size: int = 16, *,
                    chat_template: bool = False, desc: str | None = None) -> np.ndarray:
    """Fraction of continuation positions where the model's argmax is the continuation's token.

    Locality the EasyEdit way: ``continuations`` are the base model's greedy answer ids; NaN where empty.
    """
    prompt_ids = [encode_prompt(tokenizer, p, chat_template=chat_template) for p in prompts]
    out = np.full(len(prompt_ids), np.nan)
    keep = [i for i, c in enumerate(continuations) if len(c)]
    rows = _teacher_forced(model, [prompt_ids[i] for i in keep], [list(continuations[i]) for i in keep],
                           batch_size, tokenizer, desc, first_token=False)
    for j, row in rows:
        out[keep[j]] = float(np.mean(row["argmax"] == np.asarray(continuations[keep[j]])))
    return out


def _teacher_forced(model: Any, prompt_ids: list[list[int]], cont_ids: list[list[int]], batch_size: int,
                    tokenizer: Any, desc: str | None, first_token: bool) -> Iterator[tuple[int, dict]]:
    """Yields (index, {logprobs, argmax[, rank, expected_distance]}) per pair, batched by length."""
    import torch

    device = _device(model)
    pad = _pad_id(tokenizer)
    emb = model.get_input_embeddings().weight if first_token else None
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]) + len(cont_ids[i]))
    with _inference(model):
        for batch in _batches(order, batch_size, desc):
            seqs = [prompt_ids[i] + cont_ids[i] for i in batch]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):  # right padding: positions stay 0..n-1 for every row
                ids[r, :len(s)] = torch.tensor(s)
                mask[r, :len(s)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for r, i in enumerate(batch):
                lp, lc = len(prompt_ids[i]), len(cont_ids[i])
                row_logits = logits[r, lp - 1: lp - 1 + lc].float()
                target = torch.tensor(cont_ids[i], device=row_logits.device)
                logprobs = torch.log_softmax(row_logits, dim=-1)
                res = {"logprobs": logprobs.gather(1, target[:, None])[:, 0].cpu().numpy(),
                       "argmax": row_logits.argmax(-1).cpu().numpy()}
                if first_token:
                    first = row_logits[0]
                    res["rank"] = first_token_rank(first, cont_ids[i][0])
                    res["expected_distance"] = expected_drift(first, emb, cont_ids[i][0])
                yield i, res


# --- greedy answers --------------------------------------------------------------------------------

def greedy_answers(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int | Sequence[int],
                   batch_size: int = 16, *, chat_template: bool = False,
                   desc: str | None = None) -> list[list[int]]:
    """Greedy answer token ids per prompt (batched, left-padded), cut at end of sequence.

    ``max_new_tokens`` may differ per prompt; a batch generates its longest budget and each row is cut to
    its own (greedy decoding is deterministic, so a prefix equals a shorter run).
    """
    import torch
    from transformers import GenerationConfig

    budgets = ([int(max_new_tokens)] * len(prompts) if isinstance(max_new_tokens, (int, np.integer))
               else [int(b) for b in max_new_tokens])
    if len(budgets) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(budgets)} max_new_tokens")
    prompt_ids = [encode_prompt(tokenizer, p, chat_template=chat_template) for p in prompts]
    device = _device(model)
    pad = _pad_id(tokenizer)
    stops = _eos_ids(model, tokenizer)
    answers: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]))
    with _inference(model):
        for batch in _batches(order, batch_size, desc):
            width = max(len(prompt_ids[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                n = len(prompt_ids[i])
                ids[r, width - n:] = torch.tensor(prompt_ids[i])
                mask[r, width - n:] = 1
            config = GenerationConfig(max_new_tokens=max(budgets[i] for i in batch), do_sample=False,
                                      pad_token_id=pad, eos_token_id=sorted(stops))
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 generation_config=config)
            for r, i in enumerate(batch):
                new = out[r, width:width + budgets[i]].tolist()
                cut = next((k for k, t in enumerate(new) if t in stops), None)
                answers[i] = new if cut is None else new[:cut + 1]  # keep the eos: locality compares it
    return answers


def decode_answer(tokenizer: Any, ids: Sequence[int]) -> str:
    """An answer's text without special tokens or surrounding space."""
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


# --- both at once: what the pipeline's probe needs --------------------------------------------------

def probe(model: Any, tokenizer: Any, prompts: Sequence[str], targets: Sequence[str], max_new_tokens: int,
          batch_size: int = 16, *, chat_template: bool = False) -> dict[str, Any]:
    """``greedy_answers`` and ``score_targets`` from one prefill of each prompt.

    Both start with the same forward pass over the prompt; the target's teacher-forced tokens and the
    greedy decode continue from (copies of) its KV cache, so a prompt is processed once instead of
    twice. Results equal the two separate functions up to float rounding (tested).

    Returns:
        ``{"answers": list[list[int]], "target_logprob", "target_rank", "drift_rank",
        "drift_expected": np.ndarray}``
    """
    import torch

    prompt_ids, target_ids = _encode_pairs(tokenizer, prompts, targets, chat_template)
    n = len(prompt_ids)
    out: dict[str, Any] = {"answers": [[] for _ in range(n)], "target_logprob": np.zeros(n),
                           "target_rank": np.zeros(n, dtype=np.int64), "drift_expected": np.zeros(n)}
    device, pad, stops = _device(model), _pad_id(tokenizer), _eos_ids(model, tokenizer)
    emb = model.get_input_embeddings().weight
    order = sorted(range(n), key=lambda i: len(prompt_ids[i]))
    with _inference(model):
        for batch in _batches(order, batch_size, None):
            width = max(len(prompt_ids[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):  # left padding: every prompt ends where its answer starts
                ids[r, width - len(prompt_ids[i]):] = torch.tensor(prompt_ids[i])
                mask[r, width - len(prompt_ids[i]):] = 1
            ids, mask = ids.to(device), mask.to(device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            first = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
            last = first.logits[:, -1].float()
            cache = getattr(first, "cache", None) or first.past_key_values  # renamed in transformers 5
            logps = _probe_target(model, cache, mask, pos, last, batch, target_ids, pad, emb, out)
            for r, i in enumerate(batch):
                out["target_logprob"][i] = float(np.mean(logps[r]))
            _probe_greedy(model, cache, mask, pos, last, batch, max_new_tokens, stops, out)
    out["drift_rank"] = rank_drift(out["target_rank"], vocab_size(model))
    return out


def _probe_target(model: Any, cache: Any, mask: "torch.Tensor", pos: "torch.Tensor", last: "torch.Tensor",
                  batch: list[int], target_ids: list[list[int]], pad: int, emb: "torch.Tensor",
                  out: dict[str, Any]) -> list[list[float]]:
    """First-token rank and expected-embedding distance; teacher-forced log-probs of every target token."""
    import copy

    import torch

    logps: list[list[float]] = []
    for r, i in enumerate(batch):
        t0 = target_ids[i][0]
        row = last[r]
        out["target_rank"][i] = first_token_rank(row, t0)
        out["drift_expected"][i] = expected_drift(row, emb, t0)
        logps.append([float(torch.log_softmax(row, -1)[t0])])
    rest = max(len(target_ids[i]) for i in batch) - 1
    if rest > 0:  # the later target tokens, fed after the prompt on a copy of its cache
        device = mask.device
        tin = torch.full((len(batch), rest), pad, dtype=torch.long)
        tmask = torch.zeros((len(batch), rest), dtype=torch.long)
        for r, i in enumerate(batch):
            k = len(target_ids[i]) - 1
            if k:
                tin[r, :k] = torch.tensor(target_ids[i][:-1])
                tmask[r, :k] = 1
        tpos = pos[:, -1:] + 1 + torch.arange(rest, device=device)[None, :]
        logits = model(input_ids=tin.to(device), attention_mask=torch.cat([mask, tmask.to(device)], 1),
                       position_ids=tpos, cache=copy.deepcopy(cache)).logits.float()
        for r, i in enumerate(batch):
            for k in range(1, len(target_ids[i])):
                logps[r].append(float(torch.log_softmax(logits[r, k - 1], -1)[target_ids[i][k]]))
    return logps


def _probe_greedy(model: Any, cache: Any, mask: "torch.Tensor", pos: "torch.Tensor", last: "torch.Tensor",
                  batch: list[int], max_new_tokens: int, stops: set[int], out: dict[str, Any]) -> None:
    """Greedy decoding from the prompt's cache; each answer cut after its first end-of-sequence token."""
    import torch

    nxt = last.argmax(-1)
    done = [False] * len(batch)
    cur_pos = pos[:, -1:]
    for step in range(max_new_tokens):
        for r, i in enumerate(batch):
            if not done[r]:
                token = int(nxt[r])
                out["answers"][i].append(token)
                done[r] = token in stops
        if all(done) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((len(batch), 1), dtype=mask.dtype, device=mask.device)], 1)
        cur_pos = cur_pos + 1
        logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=cur_pos,
                       cache=cache).logits[:, -1]
        nxt = logits.argmax(-1)


# --- embedding-space distance between texts --------------------------------------------------------

def mean_embedding_distance(model: Any, tokenizer: Any, texts: Sequence[str],
                            targets: Sequence[str]) -> np.ndarray:
    """1 - cos(mean E[tokens of text], mean E[tokens of target]); both tokenised as " " + stripped text.

    An empty text is at distance 1.
    """
    import torch

    if len(texts) != len(targets):
        raise ValueError(f"{len(texts)} texts but {len(targets)} targets")
    emb = model.get_input_embeddings().weight
    out = np.ones(len(texts))

    def mean_vec(text: str) -> "torch.Tensor | None":
        ids = tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"] if text.strip() else []
        return emb[torch.tensor(ids, device=emb.device)].float().mean(0) if ids else None

    with torch.no_grad():
        for i, (a, b) in enumerate(zip(texts, targets)):
            va, vb = mean_vec(a), mean_vec(b)
            if va is not None and vb is not None:
                out[i] = min(2.0, max(0.0, 1.0 - float(torch.cosine_similarity(va, vb, dim=0))))
    return out


# --- helpers ---------------------------------------------------------------------------------------

def _device(model: Any) -> "torch.device":
    return next(model.parameters()).device


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return int(pad)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    ids.update(extra if isinstance(extra, (list, tuple)) else [extra] if extra is not None else [])
    return {int(i) for i in ids}


def _batches(order: list[int], batch_size: int, desc: str | None) -> Iterator[list[int]]:
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if desc:
        from scoring.progress import bar

        chunks = bar(chunks, desc=desc, unit="batch")
    yield from chunks


class _inference:
    """eval mode + no grad, restoring the model's training flag afterwards."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __enter__(self) -> None:
        import torch

        self.was_training = self.model.training
        self.model.eval()
        self.grad = torch.inference_mode()
        self.grad.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.grad.__exit__(*exc)
        self.model.train(self.was_training)
