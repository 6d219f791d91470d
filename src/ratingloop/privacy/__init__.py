"""Privacy: deleting an end user from everything ratingloop keeps.

forget.py   forget_user(engine, user_id, user_key=..., data_dir=...): the store's rows and a keyed tombstone,
            and every stage's purge step, in order; what `DELETE /v1/users/{id}` and `ratingloop users delete`
            call

Importing this package is cheap: no torch (the stages' purge steps use the store and plain files).
"""

from ratingloop.privacy.forget import forget_user

__all__ = ["forget_user"]
