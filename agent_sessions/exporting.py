"""A user's conversations as JSON or Markdown, written as a stream.

``SessionManager.export_user`` yields one ``ConversationExport`` at a time; the functions
here turn that stream into text chunks, so neither a large user nor a large conversation list
has to fit in memory (one conversation is held at a time).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from .models import ConversationExport, SessionStats

EXPORT_FORMAT_VERSION = 1
"""Version of the JSON export's layout, recorded in it."""


def timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC, to the microsecond, ending in ``Z`` (every value the same width)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


def stats_json(stats: SessionStats) -> dict[str, Any]:
    """``stats`` as JSON-ready values (times as ``timestamp`` text)."""
    return {
        key: timestamp(value) if isinstance(value, datetime) else value
        for key, value in stats.model_dump().items()
    }


def conversation_json(conversation: ConversationExport) -> dict[str, Any]:
    """One exported conversation as a JSON-ready object: its stats and ``items``."""
    return {**stats_json(conversation.session), "items": conversation.items}


async def json_chunks(
    user_id: str, conversations: AsyncIterable[ConversationExport], *, exported_at: datetime
) -> AsyncIterator[str]:
    """A JSON document of a user's conversations, in chunks (one per conversation).

    The document is ``{"format": 1, "user_id": ..., "exported_at": ..., "conversations":
    [...]}``; concatenated, the chunks are valid JSON even when there is no conversation.
    """
    head = {
        "format": EXPORT_FORMAT_VERSION,
        "user_id": user_id,
        "exported_at": timestamp(exported_at),
    }
    yield _json_text(head)[:-1] + ', "conversations": ['
    separator = "\n"
    async for conversation in conversations:
        yield separator + _json_text(conversation_json(conversation))
        separator = ",\n"
    yield "\n]}\n"


def _json_text(value: object) -> str:
    """JSON text that encodes as UTF-8.

    Non-ASCII stays readable, unless a lone surrogate (which an item may hold, and UTF-8
    cannot) makes the escaped form necessary.
    """
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value)
    return text


def _replace_surrogates(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8") if _has_surrogate(text) else text


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def utf8_safe(value: Any) -> Any:
    """``value`` (JSON-like) with each lone surrogate in its strings replaced by ``?``."""
    if isinstance(value, str):
        return _replace_surrogates(value)
    if isinstance(value, list):
        return [utf8_safe(item) for item in value]
    if isinstance(value, dict):
        return {utf8_safe(key): utf8_safe(item) for key, item in value.items()}
    return value


def content_text(content: object) -> str:
    """A message content (text, or a list of parts) as plain text; other parts as ``[type]``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text") or part.get("refusal") or f"[{part.get('type', 'part')}]")
            for part in content
            if isinstance(part, Mapping)
        )
    return json.dumps(content)


def render_markdown(stats: SessionStats, items: Sequence[Mapping[str, Any]]) -> str:
    """Render a session's items as a readable Markdown transcript."""
    lines = [
        f"# Session `{stats.session_id}`",
        "",
        f"- title: {stats.title}" if stats.title else "- title: (none yet)",
        f"- user: `{stats.user_id}`",
        f"- conversation: `{stats.conversation_id}`",
        f"- items: {stats.message_count} (corrupt rows skipped: {stats.corrupt_items})",
        f"- created: {timestamp(stats.created_at)}; "
        f"last activity: {timestamp(stats.last_activity)}",
    ]
    if stats.metadata:
        lines.append(f"- metadata: `{json.dumps(stats.metadata, ensure_ascii=False)}`")
    lines.append("")
    for item in items:
        kind = item.get("type")
        role = item.get("role")
        if role is not None and kind in (None, "message"):
            lines.append(f"**{str(role).capitalize()}:** {content_text(item.get('content'))}")
        elif kind == "function_call":
            lines.append(
                f"**Tool call** `{item.get('name')}({item.get('arguments', '')})` "
                f"(call `{item.get('call_id')}`)"
            )
        elif isinstance(kind, str) and kind.endswith("_output"):
            lines.append(f"**Tool output** (call `{item.get('call_id')}`): {item.get('output')}")
        elif kind == "reasoning":
            lines.append("*[reasoning]*")
        else:
            lines.append(f"*[{kind or 'item'}]* `{json.dumps(item)[:200]}`")
        lines.append("")
    return "\n".join(lines)


def conversation_markdown(conversation: ConversationExport) -> str:
    """One exported conversation as a Markdown transcript (UTF-8 safe: see ``utf8_safe``)."""
    return _replace_surrogates(render_markdown(conversation.session, conversation.items))


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._@+-]+")


def markdown_file_name(stats: SessionStats) -> str:
    """A portable file name for a conversation's Markdown (its id, made safe, plus ``.md``)."""
    name = _UNSAFE_NAME.sub("_", stats.conversation_id or stats.session_id).strip("._") or "session"
    return f"{name[:120]}.md"
