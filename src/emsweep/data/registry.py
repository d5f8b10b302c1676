"""Source formats by name (lazy "module:function" entries, as lm-evaluation-harness registers models).

A reader is `fn(spec: SourceSpec, password: str | None) -> list[Conversation]`. Adding a format is one module
with such a function plus one line in `SOURCE_READERS`; a recipe picks it with `format: <name>` on a source
(docs/extending.md). `auto` is not a reader: `readers.detect_format` picks one from the path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from emsweep.registry import load_entry

if TYPE_CHECKING:
    from emsweep.data.conversation import Conversation
    from emsweep.data.spec import SourceSpec

SourceReader = Callable[["SourceSpec", "str | None"], "list[Conversation]"]

SOURCE_READERS: dict[str, str] = {
    "jsonl": "emsweep.data.readers:read_jsonl_source",  # OpenAI chat / persona JSONL, plain or gzip
    "zip": "emsweep.data.readers:read_zip_conversations",  # password-locked zips (one member)
    "hf": "emsweep.data.readers:read_hf_conversations",  # Hugging Face datasets (folder, file or hub id)
}
# recipe names that select a registered reader
FORMAT_ALIASES: dict[str, str] = {"chat_jsonl": "jsonl", "persona": "jsonl"}
AUTO = "auto"


def source_format_names() -> tuple[str, ...]:
    """Every name a recipe's `format:` may hold."""
    return (AUTO, *sorted({*SOURCE_READERS, *FORMAT_ALIASES}))


def check_source_format(name: str) -> str:
    """`name` if a recipe may use it (for the recipe validator), else ValueError listing the names."""
    if name == AUTO or name in SOURCE_READERS or name in FORMAT_ALIASES:
        return name
    raise ValueError(f"unknown source format {name!r}; registered formats: {', '.join(source_format_names())}")


def source_reader(name: str) -> SourceReader:
    """The reader registered under `name` (or an alias of it); a clear error for an unknown or broken entry."""
    return load_entry(SOURCE_READERS, "source format", FORMAT_ALIASES.get(name, name), source_format_names())
