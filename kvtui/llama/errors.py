"""Typed errors of the llama-server client, each saying what went wrong and what to do about it.

``err.message`` is what happened, ``err.hint`` what the user should do (often an exact flag), and
``str(err)`` is the one-line message shown to users: both together.
"""

from __future__ import annotations

import json

import httpx

from kvtui.errors import KvtuiError

START_HINT = (
    "llama-server -m MODEL.gguf -c CONTEXT -np SLOTS --no-kv-unified --slot-save-path DIR --metrics"
)
"""A llama-server command line that suits kvtui (explicit slots, slot actions enabled)."""


class LlamaError(KvtuiError):
    """Any failure talking to llama-server."""

    def __init__(self, message: str, hint: str | None = None, *, status: int | None = None) -> None:
        super().__init__(message, hint)
        self.status = status
        """The HTTP status of the server's answer, when there was one."""


class ServerUnreachable(LlamaError):
    """No answer: connection refused, a timeout, or the connection broke mid-call."""

    default_hint = (
        f"Is llama-server running at that address? Start it with `{START_HINT}`, "
        "or point kvtui at the right one with --server URL."
    )


class ModelLoading(LlamaError):
    """503 "Loading model": the server is up but not ready yet."""

    default_hint = "Wait until llama-server has loaded its model, then try again."


class SlotsEndpointDisabled(LlamaError):
    """501 on ``GET /slots``: the server runs with ``--no-slots``."""

    default_hint = "Restart llama-server with --slots (it is on unless --no-slots was given)."


class SlotActionsDisabled(LlamaError):
    """501 on save/restore/erase: the server has no ``--slot-save-path``."""

    default_hint = (
        "Restart llama-server with --slot-save-path DIR (an existing directory), and give kvtui "
        "the same directory as its save directory."
    )


class InvalidFilename(LlamaError):
    """A save file name that is not a plain file name inside the save directory."""

    default_hint = (
        "Use a plain file name such as `chat_character.bin`: no `/`, `\\`, `..`, control "
        'characters or any of `:*?"<>|`, and no leading/trailing space or trailing dot.'
    )


class RestoreFailed(LlamaError):
    """The server refused a restore (400). It has cleared the target slot."""

    default_hint = (
        "The file is missing, was saved with a different model, or holds more tokens than the "
        "slot's context. llama-server cleared the slot: load another save or start the chat "
        "again; check llama-server's log for the exact reason."
    )


class SlotOutOfRange(LlamaError):
    """A slot id outside ``0 <= id < total_slots`` (the server would silently wrap it)."""


class SaveFileMissing(LlamaError):
    """Restore refused before the server saw it: the file is not in the save directory."""


class AuthenticationFailed(LlamaError):
    """401: missing or wrong API key."""

    default_hint = (
        "Give kvtui the same key as llama-server's --api-key (setting api_key, KVTUI_API_KEY or "
        "--api-key)."
    )


class NoSlotAvailable(LlamaError):
    """503 "no slot available": every slot is busy."""

    default_hint = "Every slot is busy; wait for a generation to finish and try again."


class ServerError(LlamaError):
    """Any other unexpected answer (the status is in ``.status``)."""

    default_hint = (
        "Check llama-server's log. If this is not a llama.cpp llama-server, or a very old build, "
        "point kvtui at a recent llama-server."
    )


def server_message(text: str) -> str:
    """The human part of an error body: ``{"error": {"message": ...}}`` and older shapes."""
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:200]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        for key in ("message", "status", "detail"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return " ".join(text.split())[:200]


def error_for_response(
    status: int,
    text: str,
    url: str,
    what: str,
    *,
    api_key: bool = False,
    endpoint: str | None = None,
    slot: int | None = None,
    filename: str | None = None,
    restore: bool = False,
) -> LlamaError:
    """The typed error for a non-200 answer to ``what`` (e.g. ``"POST /slots/0?action=save"``).

    ``endpoint`` is ``"slots"`` for ``GET /slots`` and ``"action"`` for save/restore/erase,
    which tells the two 501s apart.
    """
    msg = server_message(text)
    low = msg.lower()
    said = f" (llama-server said: {msg})" if msg else ""
    if status == 401:
        if api_key:
            return AuthenticationFailed(
                f"llama-server at {url} refused kvtui's API key{said}.", status=status
            )
        return AuthenticationFailed(f"llama-server at {url} needs an API key{said}.", status=status)
    if status == 503 and "loading" in low:
        return ModelLoading(f"llama-server at {url} is still loading its model.", status=status)
    if status == 503 and "no slot" in low:
        return NoSlotAvailable(f"llama-server at {url} has no free slot for {what}.", status=status)
    if status == 501 and endpoint == "slots":
        return SlotsEndpointDisabled(
            f"llama-server at {url} has its /slots endpoint disabled.", status=status
        )
    if status == 501 and (endpoint == "action" or "slot-save-path" in low):
        return SlotActionsDisabled(
            f"llama-server at {url} cannot save, restore or erase slots: it was started without "
            "--slot-save-path.",
            status=status,
        )
    if status == 400 and "invalid filename" in low:
        return InvalidFilename(
            f"llama-server refused the file name {filename!r}{said}.", status=status
        )
    if status == 400 and restore:
        return RestoreFailed(
            f"llama-server could not restore {filename} into slot {slot}{said}.", status=status
        )
    if status == 404:
        return ServerError(
            f"{url} has no route for {what} (404){said}.",
            f"Is {url} a llama.cpp llama-server? kvtui needs a build with /props and /slots; "
            "point kvtui at one with --server URL.",
            status=status,
        )
    hint = None
    if status >= 500 and "does not match the expected" in low:
        hint = (
            "The model produced text that is not valid UTF-8, which some llama-server builds "
            "cannot send; try again, or update llama-server."
        )
    return ServerError(
        f"llama-server at {url} answered {what} with HTTP {status}{said}.", hint, status=status
    )


def unreachable(err: Exception, url: str, what: str, timeout: float) -> ServerUnreachable:
    """The ``ServerUnreachable`` for an httpx failure (nothing, or half an answer, came back)."""
    reason = str(err) or type(err).__name__
    if isinstance(err, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return ServerUnreachable(
            f"{url!r} is not a usable llama-server URL ({reason}).",
            "Use a URL like http://127.0.0.1:8080 (setting server_url, KVTUI_SERVER_URL or "
            "--server).",
        )
    if isinstance(err, httpx.ConnectTimeout):
        return ServerUnreachable(
            f"Connecting to llama-server at {url} timed out after {timeout:g} s."
        )
    if isinstance(err, httpx.ConnectError):
        return ServerUnreachable(f"No llama-server answers at {url} ({reason}).")
    if isinstance(err, httpx.TimeoutException):
        return ServerUnreachable(
            f"llama-server at {url} did not answer {what} within {timeout:g} s.",
            "llama-server may be overloaded or stuck: check that it is running and read its log, "
            "then try again.",
        )
    return ServerUnreachable(
        f"The connection to llama-server at {url} broke during {what} ({reason}).",
        "llama-server may have crashed or been restarted: check that it is running (and its "
        "log), then try again.",
    )
