"""Stage 2, serving: no end-user id in the server's logs.

uvicorn's access log prints every request's path, and `DELETE /v1/users/{id}` carries the id of the user
being deleted - the one thing a deletion must not leave behind in a log file. `RedactUserIds` rewrites
`/v1/users/<anything>` to `/v1/users/[redacted]` in every record it sees; `uvicorn_log_config()` is
uvicorn's own logging config with that filter on its handlers, which `ratingloop serve` hands to uvicorn
(each worker process configures its logging from it, so the filter is there in every worker).
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

USER_PATH = re.compile(r"/v1/users/[^\s\"]*")  # to the end of the path: the id may contain / (and ?query after it)
REDACTED = "/v1/users/[redacted]"


class RedactUserIds(logging.Filter):
    """Replaces user ids in `/v1/users/...` paths, in the message and in its arguments; drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "/v1/users/" in record.msg:
            record.msg = USER_PATH.sub(REDACTED, record.msg)
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "/v1/users/" in a for a in record.args):
            record.args = tuple(USER_PATH.sub(REDACTED, a) if isinstance(a, str) else a for a in record.args)
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging config (`uvicorn.config.LOGGING_CONFIG`) with `RedactUserIds` on every handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_user_ids"] = {"()": f"{__name__}.RedactUserIds"}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "redact_user_ids"]
    return config
