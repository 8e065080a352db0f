"""Named prompt templates, as data.

A registry entry names one (``prompt = "llama-2-chat"``) or gives its own text
(``prompt = { name = "...", text = "..." }``). Templates are plain strings with
``{prompt}`` where the user's message goes and, for some, ``{system_message}``
which the card fills with the template's default system message (or the
entry's ``system_message``). They are never formatted with ``str.format`` and
never rendered by Jinja: the card shows them verbatim.

Sources: the Alpaca repository (tatsu-lab/stanford_alpaca), FastChat's
conversation templates (Vicuna v1.1), the QLoRA/Guanaco model card, Meta's
Llama 2 reference code (``llama/generation.py``: ``[INST]``, ``<<SYS>>``), and
OpenAI's ChatML as used by many fine-tunes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import UnusableInput

LLAMA2_DEFAULT_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature. If a question does not make any "
    "sense, or is not factually coherent, explain why instead of answering something not correct. If you don't know "
    "the answer to a question, please don't share false information."
)


@dataclass(frozen=True)
class PromptTemplate:
    key: str  # library name, or "custom"
    title: str  # shown in the card's heading: "Prompt template: {title}"
    text: str  # contains {prompt}; maybe {system_message}
    default_system: str = ""

    def filled(self, system_message: str | None = None) -> str:
        """The text with ``{system_message}`` replaced (``{prompt}`` stays)."""
        system = self.default_system if system_message is None else system_message
        return self.text.replace("{system_message}", system)


LIBRARY: dict[str, PromptTemplate] = {
    t.key: t
    for t in (
        PromptTemplate(
            "alpaca",
            "Alpaca",
            "Below is an instruction that describes a task. Write a response that appropriately completes the request."
            "\n\n### Instruction:\n{prompt}\n\n### Response:\n",
        ),
        PromptTemplate(
            "alpaca-short",
            "Alpaca (no preamble)",
            "### Instruction:\n{prompt}\n### Response:\n",
        ),
        PromptTemplate(
            "vicuna",
            "Vicuna",
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
            "detailed, and polite answers to the user's questions. USER: {prompt} ASSISTANT:",
        ),
        PromptTemplate(
            "guanaco",
            "Guanaco",
            "### Human: {prompt} ### Assistant:",
        ),
        PromptTemplate(
            "qlora-chat",
            "QLoRA chat",
            "A chat between a curious human and an artificial intelligence assistant."
            "The assistant gives helpful, detailed, and polite answers to the user's questions.\n"
            "### Human: {prompt} ### Assistant:",
        ),
        PromptTemplate(
            "llama-2-chat",
            "Llama-2-Chat",
            "[INST] <<SYS>>\n{system_message}\n<</SYS>>\n{prompt} [/INST]",
            LLAMA2_DEFAULT_SYSTEM,
        ),
        PromptTemplate(
            "chatml",
            "ChatML",
            "<|im_start|>system\n{system_message}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
            "<|im_start|>assistant\n",
            "You are a helpful assistant.",
        ),
        PromptTemplate("none", "None", "{prompt}"),
    )
}


def get(name: str, source: str | None = None) -> PromptTemplate:
    """A library template by name; an unknown name is named with the closest known one."""
    import difflib

    key = name.strip().lower()
    if key in LIBRARY:
        return LIBRARY[key]
    close = difflib.get_close_matches(key, list(LIBRARY), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UnusableInput(f"unknown prompt template {name!r}{hint}; known: {', '.join(sorted(LIBRARY))}", source)


def custom(text: str, title: str = "Custom") -> PromptTemplate:
    return PromptTemplate("custom", title, text)


def resolve(value: str | dict[str, str], source: str | None = None) -> PromptTemplate:
    """A registry ``prompt``: a library name, a literal template (a string with ``{prompt}``),
    or ``{name, text}``. Unknown names are named with the closest known one."""
    if isinstance(value, dict):
        return custom(value["text"], value["name"])
    if "{prompt}" in value:
        return custom(value)
    return get(value, source)
