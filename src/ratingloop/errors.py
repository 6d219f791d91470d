"""The one small exception hierarchy of ratingloop.

The CLI turns a RatingloopError into a one-line message and exit code 1; the HTTP API turns it into
a 4xx whose body names the field and the reason. Messages say what, the value, and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of a request, import line or config file.

    `field` is a dotted path such as ``ratings[2].value``; `status` is the HTTP status this problem
    maps to (422 invalid, 404 unknown interaction, 409 conflict, 403 forbidden, 410 deleted user).
    """

    field: str
    reason: str
    status: int = 422

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"

    def within(self, prefix: str) -> FieldError:
        """The same error, its field path nested under `prefix` (``ratings[0]`` + ``value``)."""
        field = f"{prefix}.{self.field}" if self.field and not self.field.startswith("[") else prefix + self.field
        return FieldError(field, self.reason, self.status)


class RatingloopError(Exception):
    """Base class: an error the user can act on. The message is shown as it is."""

    status = 400


class ConfigError(RatingloopError):
    """Settings or a config file are wrong; the message names the key and the fix."""


class StoreError(RatingloopError):
    """The database cannot be opened or migrated."""


class InvalidInput(RatingloopError):
    """One or more fields are invalid; `errors` lists each with its field and reason."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        self.status = max((e.status for e in errors), key=_STATUS_PRIORITY.index, default=422)
        super().__init__("; ".join(str(e) for e in errors))


class Unauthorized(RatingloopError):
    status = 401


class Forbidden(RatingloopError):
    status = 403


# When one request has several problems, the status it answers with is the most telling one:
# a malformed field outranks an unknown id, which outranks a conflict.
_STATUS_PRIORITY = [409, 410, 429, 403, 404, 413, 415, 422, 400]
