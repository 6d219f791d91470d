"""Stage 4, dataset (`ratingloop build`): optional PII scrubbing of prompts and completions before training.

Regexes, not a model: emails and phone numbers are the PII that support chats leak most, and a regex
is fast, offline and auditable. Matches become [EMAIL] / [PHONE] so the model learns the shape of an
answer without the data. Phone numbers need 9-15 digits written the way phones are (an optional +,
groups split by spaces, dots, dashes or parentheses): plain years, prices, "5-10 days" and short order
numbers stay untouched. Long bare digit runs (10+ digits) are scrubbed too, as phones without spacing.
"""

from __future__ import annotations

import re

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# +CC (AAA) BBB-CCCC and friends; the lookarounds keep us inside word boundaries of digits.
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?![\w])"
                   r"|(?<![\w+])\+?\d{10,15}(?!\w)")


def _is_phone(match: str) -> bool:
    return 9 <= sum(c.isdigit() for c in match) <= 15


def scrub(text: str) -> str:
    """`text` with emails and phone numbers replaced."""
    text = EMAIL.sub("[EMAIL]", text)
    return PHONE.sub(lambda m: "[PHONE]" if _is_phone(m.group(0)) else m.group(0), text)


def scrub_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{**m, "content": scrub(m["content"])} for m in messages]
