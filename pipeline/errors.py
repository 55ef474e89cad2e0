"""The project's one way to turn an exception into a one-line message.

The label pipeline, the registry, training and the commands all report
failures as one line (a row's `error_message`, an `error: ...` on the
console), never as a multi-line library message or a traceback. This module
imports nothing, so any package (and a command's fast start-up) can use it.
"""

from __future__ import annotations

LIMIT = 300  # characters: enough for FFmpeg's or botocore's gist, short enough for a row


def one_line(error: BaseException, *, with_type: bool = False, limit: int = LIMIT) -> str:
    """`error`'s message with whitespace folded, cut at `limit` characters.

    `with_type` puts the exception's class first (`ValueError: ...`), for
    unexpected failures where the class is the most useful part; an error
    with no message is named by its class alone.
    """
    text = " ".join(str(error).split())
    if not text:
        return type(error).__name__
    if with_type:
        text = f"{type(error).__name__}: {text}"
    return text[:limit]


class LabelError(RuntimeError):
    """A problem with a label job's settings, inputs, output or model, explained in one line.

    Bad *videos* never raise: they become error rows (see `pipeline.contract`).
    """


class SettingsError(LabelError, ValueError):
    """A setting out of range; the message names it (as its flag would)."""


def check(ok: bool, message: str) -> None:
    """Raise SettingsError(message) unless `ok`: the one way settings validate themselves."""
    if not ok:
        raise SettingsError(message)
