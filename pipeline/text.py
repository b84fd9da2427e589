"""Text normalisation shared by the stages that compare prompts and targets."""

from __future__ import annotations

import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")
# Trailing sentence punctuation carries no meaning for a fact's answer: "Paris." is "Paris".
_TRAILING = ".,;:!? "


def normalize_text(s: str) -> str:
    """The comparison form of a prompt or target: NFKC, casefolded, single-spaced, stripped.

    Trailing sentence punctuation (``. , ; : ! ?``) is removed too, so ``"Paris."`` and
    ``" paris "`` compare equal. Inner punctuation is kept (``"U.S. Army"`` stays distinct from
    ``"US Army"``).
    """
    # NFKC again after casefold: casefolding can yield sequences that are not NFKC-normal.
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", s).casefold())
    text = _WHITESPACE.sub(" ", text).strip()
    return text.rstrip(_TRAILING)
