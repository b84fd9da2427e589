"""Record layouts: recognise one input record and turn it into a normalised Fact dict.

Pure functions, no Beam, so every rule is unit-tested directly. Layouts:

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

from pipeline.config import CurateConfig
from schemas.fact import stable_fact_id

LAYOUTS = ("plain", "counterfact", "rome", "zsre")

# Keys of the plain layout that map onto Fact fields; every other key goes to ``meta``.
_PLAIN_KEYS = {"fact_id", "prompt", "target", "subject", "relation", "ground_truth", "paraphrases",
               "locality", "meta"}
_REPR_MAX = 80


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
    fact = convert(record)
    _check_length("prompt", fact["prompt"], config.max_prompt_chars, "max_prompt_chars")
    _check_length("target", fact["target"], config.max_target_chars, "max_target_chars")
    if not fact["fact_id"]:
        fact["fact_id"] = stable_fact_id(fact["prompt"], fact["target"])
    fact["source"] = source
    fact["position"] = int(position)
    return fact


# --- layouts ----------------------------------------------------------------------------------------

def _from_plain(r: dict) -> dict:
    meta = {str(k): _meta_value(v) for k, v in r.items() if k not in _PLAIN_KEYS and v is not None}
    # A given ``meta`` wins over a loose key of the same name: it is the user's explicit choice.
    meta.update(_meta_dict(r.get("meta")))
    return _fact(
        fact_id=_id_text("fact_id", r.get("fact_id")),
        prompt=_required_text("prompt", r.get("prompt")),
        target=_required_text("target", r.get("target")),
        subject=_optional_text("subject", r.get("subject")),
        relation=_optional_text("relation", r.get("relation")),
        ground_truth=_optional_text("ground_truth", r.get("ground_truth")),
        paraphrases=_text_list("paraphrases", r.get("paraphrases")),
        locality=_locality_items("locality", r.get("locality")),
        meta=meta,
    )


def _from_counterfact(r: dict) -> dict:
    # KnowEdit names the paraphrase 'rephrase'; EasyEdit's CounterFact 'rephrase_prompt'.
    rephrase_key = "rephrase_prompt" if "rephrase_prompt" in r else "rephrase"
    if isinstance(r.get("locality"), dict):
        locality = _knowedit_locality(r["locality"])
    else:
        locality = _parallel_locality(r.get("locality_prompt"), r.get("locality_ground_truth"))
    return _fact(
        fact_id=_id_text("case_id", r.get("case_id")),
        prompt=_required_text("prompt", r.get("prompt")),
        target=_required_text("target_new", r.get("target_new")),
        subject=_optional_text("subject", r.get("subject")),
        relation=_optional_text("relation", r.get("relation")),
        ground_truth=_first_text("ground_truth", r.get("ground_truth")),
        paraphrases=_text_list(rephrase_key, r.get(rephrase_key), allow_single=True),
        locality=locality,
        meta={"layout": "counterfact"},
    )


def _from_rome(r: dict) -> dict:
    rw = r.get("requested_rewrite")
    if not isinstance(rw, dict):
        raise _invalid("requested_rewrite", rw, "must be an object with prompt, subject, target_new")
    subject = _required_text("requested_rewrite.subject", rw.get("subject"))
    template = _required_text("requested_rewrite.prompt", rw.get("prompt"))
    if "{}" not in template:
        raise _invalid("requested_rewrite.prompt", template,
                       "must be a template with '{}' where the subject goes")
    # str.replace, not str.format: a stray brace in a prompt must not break the record.
    prompt = template.replace("{}", subject)
    target = _required_text("requested_rewrite.target_new.str", _dict_get(rw, "target_new", "str"))
    truth = _optional_text("requested_rewrite.target_true.str", _dict_get(rw, "target_true", "str"))
    neighbours = _text_list("neighborhood_prompts", r.get("neighborhood_prompts"))
    if neighbours and truth is None:
        raise _invalid("requested_rewrite.target_true.str", None,
                       "is needed as the answer of neighborhood_prompts")
    return _fact(
        fact_id=_id_text("case_id", r.get("case_id")),
        prompt=prompt,
        target=target,
        subject=subject,
        relation=_optional_text("requested_rewrite.relation_id", rw.get("relation_id")),
        ground_truth=truth,
        paraphrases=_text_list("paraphrase_prompts", r.get("paraphrase_prompts")),
        locality=[{"prompt": p, "answer": truth} for p in neighbours],
        meta={"layout": "rome"},
    )


def _from_zsre(r: dict) -> dict:
    loc, loc_ans = r.get("loc"), r.get("loc_ans")
    locality = []
    if loc is not None or loc_ans is not None:
        locality = [{"prompt": _required_text("loc", loc), "answer": _required_text("loc_ans", loc_ans)}]
    return _fact(
        fact_id=_id_text("case_id", r.get("case_id")),
        prompt=_required_text("src", r.get("src")),
        target=_required_text("alt", r.get("alt")),
        subject=_optional_text("subject", r.get("subject")),
        relation=None,
        ground_truth=_first_text("answers", r.get("answers")),
        paraphrases=_text_list("rephrase", r.get("rephrase"), allow_single=True),
        locality=locality,
        meta={"layout": "zsre"},
    )


_CONVERTERS: dict[str, Callable[[dict], dict]] = {
    "plain": _from_plain, "counterfact": _from_counterfact, "rome": _from_rome, "zsre": _from_zsre,
}


def _fact(*, fact_id, prompt, target, subject, relation, ground_truth, paraphrases, locality,
          meta) -> dict:
    # Field order follows FACT_SCHEMA; source and position are filled in by to_fact.
    return {"fact_id": fact_id, "prompt": prompt, "target": target, "subject": subject,
            "relation": relation, "ground_truth": ground_truth, "paraphrases": paraphrases,
            "locality": locality, "source": None, "position": None, "meta": meta}


# --- field checks -----------------------------------------------------------------------------------

def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_MAX else text[:_REPR_MAX] + "…"


def _invalid(field: str, value: Any, why: str) -> RecordError:
    return RecordError("validate", f"{field} {why}, got {_show(value)}")


def _required_text(field: str, value: Any) -> str:
    if value is None:
        raise RecordError("validate", f"{field} is missing; give it as a non-empty string")
    if not isinstance(value, str):
        raise _invalid(field, value, f"must be a string, not {type(value).__name__}")
    text = value.strip()
    if not text:
        raise _invalid(field, value, "is empty")
    return text


def _optional_text(field: str, value: Any) -> str | None:
    # Numbers are accepted and stringified: ids and years (relation 'P17', a founding year) often
    # arrive as numbers, and nothing is lost by writing them as text.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _invalid(field, value, f"must be a string, not {type(value).__name__}")
    text = str(value).strip()
    return text or None


def _id_text(field: str, value: Any) -> str | None:
    """A given id as text; None (or empty) means 'derive one from the content'."""
    return _optional_text(field, value)


def _first_text(field: str, value: Any) -> str | None:
    """A string, or the first string of a list (zsRE ``answers``, KnowEdit ``ground_truth``)."""
    if isinstance(value, list):
        field, value = f"{field}[0]", (value[0] if value else None)
    return _optional_text(field, value)


def _maybe_json(field: str, value: Any, opener: str) -> Any:
    # CSV cells carry lists as JSON text; anything else starting with the opener is a broken cell.
    if isinstance(value, str) and value.lstrip().startswith(opener):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise _invalid(field, value, f"looks like JSON but does not parse ({e.msg})") from None
    return value


def _text_list(field: str, value: Any, *, allow_single: bool = False) -> list[str]:
    """A list of non-empty strings; empty strings are dropped since they carry nothing.

    With ``allow_single`` (community layouts) a string is one item, and JSON text only when it
    parses to a list: real CounterFact paraphrases start with '[' ("[page 34. ...").
    """
    if allow_single and isinstance(value, str):
        try:
            parsed = json.loads(value) if value.lstrip().startswith("[") else None
        except json.JSONDecodeError:
            parsed = None
        value = parsed if isinstance(parsed, list) else [value]
    value = _maybe_json(field, value, "[")
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid(field, value, f"must be a list of strings, not {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _invalid(f"{field}[{i}]", item, f"must be a string, not {type(item).__name__}")
        if item.strip():
            out.append(item.strip())
    return out


def _locality_items(field: str, value: Any) -> list[dict]:
    value = _maybe_json(field, value, "[")
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid(field, value, "must be a list of {prompt, answer} objects, "
                                     f"not {type(value).__name__}")
    items = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _invalid(f"{field}[{i}]", item, "must be an object with prompt and answer")
        items.append({"prompt": _required_text(f"{field}[{i}].prompt", item.get("prompt")),
                      "answer": _required_text(f"{field}[{i}].answer", item.get("answer"))})
    return items


def _parallel_locality(prompts: Any, answers: Any) -> list[dict]:
    """CounterFact flat: ``locality_prompt`` and ``locality_ground_truth``, strings or lists."""
    if prompts is None and answers is None:
        return []
    if isinstance(prompts, str) or isinstance(answers, str):
        return [{"prompt": _required_text("locality_prompt", prompts),
                 "answer": _first_text_required("locality_ground_truth", answers)}]
    if not isinstance(prompts, list) or not isinstance(answers, list):
        raise _invalid("locality_prompt", prompts, "and locality_ground_truth must both be strings "
                                                   "or both lists")
    if len(prompts) != len(answers):
        raise RecordError("validate", f"locality_prompt has {len(prompts)} items but "
                                      f"locality_ground_truth has {len(answers)}; they must pair up")
    return [{"prompt": _required_text(f"locality_prompt[{i}]", p),
             "answer": _first_text_required(f"locality_ground_truth[{i}]", a)}
            for i, (p, a) in enumerate(zip(prompts, answers))]


def _knowedit_locality(groups: dict) -> list[dict]:
    """KnowEdit nests locality by kind: ``{kind: [{prompt, ground_truth}, ...] | {...}}``."""
    items = []
    for kind, entries in groups.items():
        if isinstance(entries, dict):
            entries = [entries]
        if not isinstance(entries, list):
            raise _invalid(f"locality.{kind}", entries, "must be a list of {prompt, ground_truth}")
        for i, entry in enumerate(entries):
            where = f"locality.{kind}[{i}]"
            if not isinstance(entry, dict):
                raise _invalid(where, entry, "must be an object with prompt and ground_truth")
            answer = entry.get("ground_truth", entry.get("answer"))
            prompts = entry.get("prompt")
            # KnowEdit sometimes gives several prompts sharing one answer.
            for p in prompts if isinstance(prompts, list) else [prompts]:
                items.append({"prompt": _required_text(f"{where}.prompt", p),
                              "answer": _first_text_required(f"{where}.ground_truth", answer)})
    return items


def _first_text_required(field: str, value: Any) -> str:
    # KnowEdit answers can be nested lists of aliases: [["Paris", "Paris, France"]].
    while isinstance(value, list) and value:
        value = value[0]
    return _required_text(field, value)


def _dict_get(obj: dict, key: str, sub: str) -> Any:
    inner = obj.get(key)
    if inner is None:
        return None
    if isinstance(inner, str):  # some ROME exports flatten target_new to a plain string
        return inner
    if not isinstance(inner, dict):
        raise _invalid(f"requested_rewrite.{key}", inner, f"must be an object with '{sub}'")
    return inner.get(sub)


def _meta_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _meta_dict(value: Any) -> dict[str, str]:
    value = _maybe_json("meta", value, "{")
    if value is None:
        return {}
    if isinstance(value, list) and all(isinstance(i, (list, tuple)) and len(i) == 2 for i in value):
        value = dict(value)  # a Parquet map<string,string> (our own FACT_SCHEMA) reads as pairs
    if not isinstance(value, dict):
        raise _invalid("meta", value, f"must be an object of strings, not {type(value).__name__}")
    return {str(k): _meta_value(v) for k, v in value.items() if v is not None}


def _check_length(field: str, text: str, limit: int, knob: str) -> None:
    if len(text) > limit:
        raise RecordError("validate", f"{field} is {len(text)} characters, above {knob}={limit}; "
                                      f"shorten it or raise {knob} (starts {_show(text[:40])})")
