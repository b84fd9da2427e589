"""Record layouts: recognise one input record and turn it into a normalised Fact dict.

Pure functions, no Beam, so every rule is unit-tested directly. This module knows each layout's
keys and quirks and maps them onto Fact fields; the rules every field follows whatever the layout
(required, stripped, typed, within the length limits) are ``schemas.Fact``'s. Layouts:

- ``plain``: Beacon's own (``prompt``, ``target``, optional ``fact_id``, ``subject``, ``relation``,
  ``ground_truth``, ``paraphrases``, ``locality``, ``meta``); any other key is kept in ``meta``.
- ``counterfact``: EasyEdit/KnowEdit flat (``prompt``, ``target_new``, ``ground_truth``,
  ``rephrase_prompt``, ``locality_prompt``, ``locality_ground_truth``, ``case_id``).
- ``rome``: ROME's CounterFact (``requested_rewrite`` with a ``{}`` template, ``paraphrase_prompts``,
  ``neighborhood_prompts``).
- ``zsre``: MEND's zsRE (``src``, ``alt``, ``rephrase``, ``loc``, ``loc_ans``, ``answers``).

Every problem is a ``RecordError`` whose ``stage`` says where it was found (``parse``: not a record
of a known layout; ``validate``: a known layout with a missing, mistyped or too long field), so the
reader can send the record to the dead letters instead of crashing.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from pydantic import ValidationError

from pipeline.config import CurateConfig
from schemas.fact import Fact, meta_dict

LAYOUTS = ("plain", "counterfact", "rome", "zsre")

# Keys of the plain layout that map onto Fact fields; every other key goes to ``meta``.
_PLAIN_KEYS = {"fact_id", "prompt", "target", "subject", "relation", "ground_truth", "paraphrases",
               "locality", "meta"}
_LOCALITY_KEYS = ("prompt", "answer")
_REPR_MAX = 80
# What a Fact field holding a value of the wrong shape should be given, for the message.
_SHAPES = {"paraphrases": "a list of strings", "locality": "a list of {prompt, answer} objects",
           "meta": "an object of strings"}

# A converter returns the Fact fields it found (None: absent) and, for community layouts, the
# source key of each field path, so that a message names the key the user actually wrote.
Names = dict[str, str]


class RecordError(Exception):
    """A record that cannot become a Fact; ``stage`` is where it failed, ``message`` why."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage
        self.message = message

    def __str__(self) -> str:
        return self.message


def detect_layout(record: dict) -> str:
    """The layout of one record: 'plain', 'counterfact', 'rome' or 'zsre'.

    Raises:
        RecordError: (stage 'parse') the record is not an object, or its keys fit no layout.
    """
    if not isinstance(record, dict):
        raise RecordError("parse", f"a record must be a JSON object, got {type(record).__name__} "
                                   f"{_show(record)}")
    keys = record.keys()
    if "requested_rewrite" in keys:
        return "rome"
    if "src" in keys and "alt" in keys:
        return "zsre"
    if "target_new" in keys:
        return "counterfact"
    # A record with only one of prompt/target is still plain: it fails validation, which names the
    # missing field, rather than parsing, which could only say "unknown layout".
    if "prompt" in keys or "target" in keys:
        return "plain"
    seen = ", ".join(sorted(map(str, keys))[:20]) or "none"
    raise RecordError("parse", f"unknown record layout (keys: {seen}); expected 'prompt' and "
                               f"'target', or a CounterFact, ROME or zsRE record")


def to_fact(record: dict, *, layout: str, source: str, position: int,
            config: CurateConfig) -> dict:
    """Convert one record of ``layout`` into a dict with exactly the fields of ``FACT_SCHEMA``.

    Args:
        record: the decoded record (a JSON object, a CSV row or a Parquet row).
        layout: one of ``LAYOUTS`` (from ``detect_layout`` or forced by the input format).
        source: the input file, copied to the fact for provenance.
        position: 0-based index of the record in ``source``.
        config: gives ``max_prompt_chars`` and ``max_target_chars``.

    Raises:
        RecordError: stage 'parse' for a non-object or unknown layout, 'validate' for a missing,
            mistyped or too long field (the message names the field and the offending value).
    """
    if not isinstance(record, dict):
        raise RecordError("parse", f"a record must be a JSON object, got {type(record).__name__} "
                                   f"{_show(record)}")
    try:
        convert = _CONVERTERS[layout]
    except KeyError:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}") from None
    fields, names = convert(record)
    # Absent fields are left out, so that Fact applies its defaults or reports them missing.
    data = {k: v for k, v in fields.items() if v is not None}
    data.update(source=source, position=int(position))
    limits = {"max_prompt_chars": config.max_prompt_chars, "max_target_chars": config.max_target_chars}
    try:
        return Fact.model_validate(data, context=limits).model_dump()
    except ValidationError as e:
        # One problem, the first in field order, as the hand-written checks used to report.
        raise RecordError("validate", _describe(e.errors()[0], names)) from None


# --- layouts ----------------------------------------------------------------------------------------

def _from_plain(r: dict) -> tuple[dict, Names]:
    meta = _meta_dict(r.get("meta"))
    if isinstance(meta, dict):
        # A given ``meta`` wins over a loose key of the same name: it is the user's explicit choice.
        loose = {str(k): _meta_value(v) for k, v in r.items() if k not in _PLAIN_KEYS and v is not None}
        meta = {**loose, **meta}
    locality = _maybe_json("locality", r.get("locality"), "[")
    if isinstance(locality, list):  # extra keys in an item (notes, ids) have no place in a Fact
        locality = [{k: i[k] for k in _LOCALITY_KEYS if k in i} if isinstance(i, dict) else i
                    for i in locality]
    return dict(
        fact_id=_as_text(r.get("fact_id")),
        prompt=r.get("prompt"),
        target=r.get("target"),
        subject=_as_text(r.get("subject")),
        relation=_as_text(r.get("relation")),
        ground_truth=_as_text(r.get("ground_truth")),
        paraphrases=_maybe_json("paraphrases", r.get("paraphrases"), "["),
        locality=locality,
        meta=meta,
    ), {}


def _from_counterfact(r: dict) -> tuple[dict, Names]:
    # KnowEdit names the paraphrase 'rephrase'; EasyEdit's CounterFact 'rephrase_prompt'.
    rephrase = "rephrase_prompt" if "rephrase_prompt" in r else "rephrase"
    truth = r.get("ground_truth")
    if isinstance(r.get("locality"), dict):
        locality, names = _knowedit_locality(r["locality"])
    else:
        locality, names = _parallel_locality(r.get("locality_prompt"), r.get("locality_ground_truth"))
    names.update({"fact_id": "case_id", "target": "target_new", "paraphrases": rephrase,
                  "ground_truth": "ground_truth[0]" if isinstance(truth, list) else "ground_truth"})
    return dict(
        fact_id=_as_text(r.get("case_id")),
        prompt=r.get("prompt"),
        target=r.get("target_new"),
        subject=_as_text(r.get("subject")),
        relation=_as_text(r.get("relation")),
        ground_truth=_as_text(_first(truth)),
        paraphrases=_text_items(r.get(rephrase)),
        locality=locality,
        meta={"layout": "counterfact"},
    ), names


def _from_rome(r: dict) -> tuple[dict, Names]:
    rw = r.get("requested_rewrite")
    if not isinstance(rw, dict):
        raise _invalid("requested_rewrite", rw, "must be an object with prompt, subject, target_new")
    prompt, subject = rw.get("prompt"), rw.get("subject")
    if isinstance(prompt, str) and prompt.strip():  # a missing or mistyped one is left to Fact
        if not isinstance(subject, str) or not subject.strip():
            raise _invalid("requested_rewrite.subject", subject,
                           "must be a non-empty string to fill the prompt's '{}'")
        if "{}" not in prompt:
            raise _invalid("requested_rewrite.prompt", prompt,
                           "must be a template with '{}' where the subject goes")
        # str.replace, not str.format: a stray brace in a prompt must not break the record.
        prompt = prompt.replace("{}", subject.strip())
    target, target_name = _rewrite_answer(rw, "target_new")
    truth, truth_name = _rewrite_answer(rw, "target_true")
    truth = _as_text(truth)
    names = {"fact_id": "case_id", "prompt": "requested_rewrite.prompt", "target": target_name,
             "subject": "requested_rewrite.subject", "relation": "requested_rewrite.relation_id",
             "ground_truth": truth_name, "paraphrases": "paraphrase_prompts"}
    neighbours = _maybe_json("neighborhood_prompts", r.get("neighborhood_prompts"), "[")
    if neighbours is not None and not isinstance(neighbours, list):
        raise _invalid("neighborhood_prompts", neighbours,
                       f"must be a list of strings, not {type(neighbours).__name__}")
    # ROME's neighbours are bare prompts answered by the true target; blank ones carry nothing.
    kept = [i for i, p in enumerate(neighbours or []) if not (isinstance(p, str) and not p.strip())]
    if kept and truth is None:
        raise _invalid(truth_name, None, "is needed as the answer of neighborhood_prompts")
    for n, i in enumerate(kept):
        names.update(_item_names(n, f"neighborhood_prompts[{i}]", truth_name))
    return dict(
        fact_id=_as_text(r.get("case_id")),
        prompt=prompt,
        target=target,
        subject=subject,
        relation=_as_text(rw.get("relation_id")),
        ground_truth=truth,
        paraphrases=_maybe_json("paraphrase_prompts", r.get("paraphrase_prompts"), "["),
        locality=[{"prompt": neighbours[i], "answer": truth} for i in kept],
        meta={"layout": "rome"},
    ), names


def _from_zsre(r: dict) -> tuple[dict, Names]:
    loc, loc_ans, answers = r.get("loc"), r.get("loc_ans"), r.get("answers")
    names = {"fact_id": "case_id", "prompt": "src", "target": "alt", "paraphrases": "rephrase",
             "ground_truth": "answers[0]" if isinstance(answers, list) else "answers",
             **_item_names(0, "loc", "loc_ans")}
    return dict(
        fact_id=_as_text(r.get("case_id")),
        prompt=r.get("src"),
        target=r.get("alt"),
        subject=_as_text(r.get("subject")),
        ground_truth=_as_text(_first(answers)),
        paraphrases=_text_items(r.get("rephrase")),
        locality=[] if loc is None and loc_ans is None else [{"prompt": loc, "answer": loc_ans}],
        meta={"layout": "zsre"},
    ), names


_CONVERTERS: dict[str, Callable[[dict], tuple[dict, Names]]] = {
    "plain": _from_plain, "counterfact": _from_counterfact, "rome": _from_rome, "zsre": _from_zsre,
}


# --- layout quirks ----------------------------------------------------------------------------------

def _as_text(value: Any) -> Any:
    # Ids and years (relation 'P17', case_id 7, a founding year) often arrive as numbers, and
    # nothing is lost by writing them as text; anything else is left for Fact to judge.
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _first(value: Any) -> Any:
    """The first of a list of answers, however nested (KnowEdit: [["Paris", "Paris, France"]])."""
    while isinstance(value, list):
        value = value[0] if value else None
    return value


def _maybe_json(field: str, value: Any, opener: str) -> Any:
    # CSV cells carry lists as JSON text; anything else starting with the opener is a broken cell.
    if isinstance(value, str) and value.lstrip().startswith(opener):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise _invalid(field, value, f"looks like JSON but does not parse ({e.msg})") from None
    return value


def _text_items(value: Any) -> Any:
    """Community paraphrases: a list, a CSV cell's JSON list, or one bare string as the only item.

    JSON only when it parses to a list: real CounterFact paraphrases start with '[' ("[page 34. ...").
    """
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value) if value.lstrip().startswith("[") else None
    except json.JSONDecodeError:
        parsed = None
    return parsed if isinstance(parsed, list) else [value]


def _parallel_locality(prompts: Any, answers: Any) -> tuple[list, Names]:
    """CounterFact flat: ``locality_prompt`` and ``locality_ground_truth``, strings or lists."""
    if prompts is None and answers is None:
        return [], {}
    if isinstance(prompts, str) or isinstance(answers, str):
        return ([{"prompt": prompts, "answer": _first(answers)}],
                _item_names(0, "locality_prompt", "locality_ground_truth"))
    if not isinstance(prompts, list) or not isinstance(answers, list):
        raise _invalid("locality_prompt", prompts, "and locality_ground_truth must both be strings "
                                                   "or both lists")
    if len(prompts) != len(answers):
        raise RecordError("validate", f"locality_prompt has {len(prompts)} items but "
                                      f"locality_ground_truth has {len(answers)}; they must pair up")
    names: Names = {}
    for i in range(len(prompts)):
        names.update(_item_names(i, f"locality_prompt[{i}]", f"locality_ground_truth[{i}]"))
    return [{"prompt": p, "answer": _first(a)} for p, a in zip(prompts, answers)], names


def _knowedit_locality(groups: dict) -> tuple[list, Names]:
    """KnowEdit nests locality by kind: ``{kind: [{prompt, ground_truth}, ...] | {...}}``."""
    items: list[dict] = []
    names: Names = {}
    for kind, entries in groups.items():
        if isinstance(entries, dict):
            entries = [entries]
        if not isinstance(entries, list):
            raise _invalid(f"locality.{kind}", entries, "must be a list of {prompt, ground_truth}")
        for i, entry in enumerate(entries):
            where = f"locality.{kind}[{i}]"
            if not isinstance(entry, dict):
                raise _invalid(where, entry, "must be an object with prompt and ground_truth")
            answer = _first(entry.get("ground_truth", entry.get("answer")))
            prompts = entry.get("prompt")
            # KnowEdit sometimes gives several prompts sharing one answer.
            for p in prompts if isinstance(prompts, list) else [prompts]:
                names.update(_item_names(len(items), f"{where}.prompt", f"{where}.ground_truth"))
                items.append({"prompt": p, "answer": answer})
    return items, names


def _rewrite_answer(rw: dict, key: str) -> tuple[Any, str]:
    """A ROME answer ``{"str": ..., "id": ...}`` (some exports flatten it to the string), and its name."""
    inner = rw.get(key)
    if inner is None or isinstance(inner, dict):
        return (inner or {}).get("str"), f"requested_rewrite.{key}.str"
    return inner, f"requested_rewrite.{key}"


def _meta_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _meta_dict(value: Any) -> Any:
    """A given ``meta`` as str -> str, or the value as it came when it is no object at all."""
    value = _maybe_json("meta", value, "{")
    if value is None:
        return {}
    value = meta_dict(value)  # our own Parquet: key/value structs, or an older dataset's map as pairs
    if not isinstance(value, dict):
        return value
    return {str(k): _meta_value(v) for k, v in value.items() if v is not None}


# --- messages ---------------------------------------------------------------------------------------

def _item_names(n: int, prompt: str, answer: str) -> Names:
    return {f"locality[{n}].prompt": prompt, f"locality[{n}].answer": answer}


def _source_name(loc: tuple, names: Names) -> str:
    """A pydantic location, ``('locality', 1, 'answer')``, as the record's own key for it."""
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    prefix = path
    while prefix:  # the longest renamed prefix wins: 'paraphrases' names 'paraphrases[2]' too
        if prefix in names:
            return names[prefix] + path[len(prefix):]
        prefix = prefix[:max(prefix.rfind("."), prefix.rfind("["), 0)]
    return path


def _describe(error: dict, names: Names) -> str:
    """One pydantic error as '<field> <what is wrong>, got <value>', the field as the record names it."""
    field = _source_name(error["loc"], names)
    kind, value = error["type"], error["input"]
    if kind == "missing" or value is None:  # the converters pass absent nested keys as None
        return f"{field} is missing; give it as a non-empty string"
    if kind == "too_long":
        return f"{field} {error['msg']} (starts {_show(value.strip()[:40])})"
    if kind == "string_type":
        why = f"must be a string, not {type(value).__name__}"
    elif kind == "string_too_short":
        why = "is empty"
    elif kind in ("list_type", "dict_type"):
        why = f"must be {_SHAPES.get(str(error['loc'][0]), 'a list')}, not {type(value).__name__}"
    elif kind == "model_type":
        why = "must be an object with prompt and answer"
    else:
        why = f"is invalid ({error['msg']})"
    return f"{field} {why}, got {_show(value)}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_MAX else text[:_REPR_MAX] + "…"


def _invalid(field: str, value: Any, why: str) -> RecordError:
    return RecordError("validate", f"{field} {why}, got {_show(value)}")
