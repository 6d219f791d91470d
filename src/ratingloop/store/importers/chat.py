"""Stage 1, the store: a prompt's chat messages and an answer's text, read from what tracing tools log.

Langfuse and LangSmith store an LLM call's input and output as they were sent and received, so the same
prompt can arrive in several shapes; these are the ones read (anything else is reported, not guessed):

  prompt   a list of chat messages - OpenAI's {role, content}, LangChain's serialised messages
           ({"lc": 1, "id": [..., "HumanMessage"], "kwargs": {"content"}}) or dicts ({"type": "human",
           "content"}); a batch of such lists (LangChain's chat-model runs: the first); an object with
           `messages`, or `prompts` (a list of strings); an object with one text field among input, question,
           query, prompt, text, user_input; plain text (one user message); any of these as a JSON string
  answer   text; an OpenAI completion (`choices[0].message.content`); LangChain's `generations[0][0]`
           (its text, or its message); a message; an object with one of output, answer, content, text,
           result, response, completion; the last assistant message of a list
"""

from __future__ import annotations

from typing import Any

import orjson

ROLES = {"user": "user", "human": "user", "prompter": "user", "system": "system", "developer": "developer",
         "assistant": "assistant", "ai": "assistant", "tool": "tool", "function": "tool"}
LANGCHAIN_CLASSES = {"HumanMessage": "user", "AIMessage": "assistant", "SystemMessage": "system",
                     "ToolMessage": "tool", "FunctionMessage": "tool", "HumanMessageChunk": "user",
                     "AIMessageChunk": "assistant"}
PROMPT_FIELDS = ("input", "question", "query", "prompt", "text", "user_input")
ANSWER_FIELDS = ("output", "answer", "content", "text", "result", "response", "completion")


def _decoded(value: Any) -> Any:
    """A JSON string's value (tools export structured payloads as strings); other values as they are."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def text(content: Any) -> str | None:
    """A message content as text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(isinstance(p, dict) for p in content):
        parts = [p.get("text") for p in content if p.get("type") in ("text", "output_text", "input_text")]
        if parts and all(isinstance(p, str) for p in parts):
            return "".join(parts)  # type: ignore[arg-type]
    return None


def message(obj: Any) -> dict[str, Any] | None:
    """One chat message as {role, content}, from OpenAI's or LangChain's shape."""
    if not isinstance(obj, dict):
        return None
    if obj.get("lc") == 1 and isinstance(obj.get("id"), list) and isinstance(obj.get("kwargs"), dict):
        kwargs = obj["kwargs"]
        role = LANGCHAIN_CLASSES.get(str(obj["id"][-1])) or ROLES.get(str(kwargs.get("role", "")))
        content = kwargs.get("content")
    elif "role" in obj:
        role, content = ROLES.get(str(obj["role"]).lower()), obj.get("content")
    elif "type" in obj:
        data: dict[str, Any] = obj["data"] if isinstance(obj.get("data"), dict) else obj
        role, content = ROLES.get(str(obj["type"]).lower()), data.get("content")
    else:
        return None
    if role is None or not (isinstance(content, str) or text(content) is not None or content is None):
        return None
    return {"role": role, "content": content if isinstance(content, (str, list)) else ""}


def messages(payload: Any) -> list[dict[str, Any]] | None:
    """A prompt as chat messages, or None when it has none of the shapes above."""
    payload = _decoded(payload)
    if isinstance(payload, str):
        return [{"role": "user", "content": payload}] if payload else None
    if isinstance(payload, list) and payload:
        if all(isinstance(x, list) for x in payload):
            return messages(payload[0])
        out = [message(x) for x in payload]
        return out if all(m is not None for m in out) else None  # type: ignore[return-value]
    if isinstance(payload, dict):
        if "messages" in payload:
            return messages(payload["messages"])
        prompts = payload.get("prompts")
        if isinstance(prompts, list) and prompts and isinstance(prompts[0], str):
            return [{"role": "user", "content": prompts[0]}]
        texts = [payload[k] for k in PROMPT_FIELDS if isinstance(payload.get(k), str)]
        if len(texts) == 1:
            return [{"role": "user", "content": texts[0]}]
        single = message(payload)
        return [single] if single is not None else None
    return None


def answer(payload: Any) -> str | None:
    """An answer's text, or None when it has none of the shapes above."""
    payload = _decoded(payload)
    if isinstance(payload, str):
        return payload
    if isinstance(payload, list) and payload:
        said = [m for m in (message(x) for x in payload) if m is not None and m["role"] == "assistant"]
        return text(said[-1]["content"]) if said else text(payload)
    if not isinstance(payload, dict):
        return None
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        first = choices[0]
        return answer(first["message"]) if "message" in first else answer(first.get("text"))
    generations = payload.get("generations")
    if isinstance(generations, list) and generations:
        first = generations[0][0] if isinstance(generations[0], list) and generations[0] else generations[0]
        if isinstance(first, dict):
            return answer(first["message"]) if isinstance(first.get("message"), dict) else answer(first.get("text"))
    single = message(payload)
    if single is not None:
        return text(single["content"])
    for key in ANSWER_FIELDS:
        if key in payload:
            return answer(payload[key])
    return None
