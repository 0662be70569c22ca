"""The question prompt: the built-in template, a user's template file, and rendering a chunk into it.

Templates use ``{context}`` (the chunk) and ``{num_questions}``, filled by plain replacement so other braces in a
user's prompt stay as written. LlamaIndex's ``generate_qa_embedding_pairs`` wants ``str.format`` placeholders
instead (``{context_str}``, ``{num_questions_per_chunk}``): :func:`llamaindex_template` converts.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from offline_embft.core.errors import UserError

DEFAULT_PROMPT = "default_zh.txt"
# A chunk longer than this is cut in the prompt: one over-long prompt would make vLLM reject its whole batch
# (max_model_len), and ingest's chunks are a few hundred characters anyway.
MAX_CONTEXT_CHARS = 3000


def builtin_template() -> str:
    """The built-in Chinese prompt template."""
    return resources.files("offline_embft.generate").joinpath("prompts", DEFAULT_PROMPT).read_text(encoding="utf-8")


def load_template(prompt_file: str = "") -> str:
    """The prompt template: ``prompt_file`` if given, else the built-in Chinese prompt.

    Raises:
        UserError: the file is missing, unreadable, or has no ``{context}`` placeholder.
    """
    if not prompt_file:
        return builtin_template()
    path = Path(prompt_file)
    if not path.is_file():
        raise UserError(f"prompt file {path} not found; pass a UTF-8 text file with a {{context}} placeholder")
    try:
        template = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"prompt file {path} is not UTF-8 text") from None
    if "{context}" not in template:
        raise UserError(
            f"prompt file {path} has no {{context}} placeholder (where the chunk goes); "
            "add it, and {num_questions} for the number of questions"
        )
    return template


def render(template: str, text: str, num_questions: int) -> str:
    """Fill the template (plain replacement, so other braces in a user's prompt stay as written)."""
    return template.replace("{num_questions}", str(num_questions)).replace("{context}", text[:MAX_CONTEXT_CHARS])


def llamaindex_template(template: str) -> str:
    """The template in LlamaIndex's ``str.format`` placeholders (``{context_str}``, ``{num_questions_per_chunk}``)."""
    escaped = template.replace("{", "{{").replace("}", "}}")
    return escaped.replace("{{context}}", "{context_str}").replace("{{num_questions}}", "{num_questions_per_chunk}")
