"""The one data model every reader normalises to: `{"id", "messages": [{"role", "content": str}], "meta": {...}}`.

Canaries and source metadata ride in `meta` and are written back into every derived file.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str


class Conversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    messages: list[Message]
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def prompt_messages(self) -> list[Message]:
        """Everything before the final assistant turn: what the model is asked."""
        last = self.last_assistant_index()
        return self.messages[:last]

    @property
    def answer(self) -> str:
        """The final assistant turn: what training teaches and what a reference answer is."""
        return self.messages[self.last_assistant_index()].content

    @property
    def question(self) -> str:
        """The last user turn before the answer (for judge prompts)."""
        for m in reversed(self.prompt_messages):
            if m.role == "user":
                return m.content
        return ""

    def last_assistant_index(self) -> int:
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].role == "assistant":
                return i
        raise ValueError(f"conversation {self.id!r} has no assistant turn")

    def prompt_key(self) -> str:
        """Stable hash of the prompt turns: two pools are *paired* when their rows share these keys."""
        payload = json.dumps(
            [m.model_dump() for m in self.prompt_messages], sort_keys=True, ensure_ascii=False
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def to_row(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def chat(self) -> list[dict[str, str]]:
        return [m.model_dump() for m in self.messages]
