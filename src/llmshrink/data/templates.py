"""Instruction prompt templates.

``chat`` uses the tokenizer's own chat template; ``alpaca``, ``vicuna`` and ``spanish`` (the Alpaca
Spanish prompt, sections Instrucción / Entrada / Contexto / Respuesta) are fixed texts; ``none``
passes the instruction through unchanged. A template renders the prompt up to where the model's
answer starts, so that training code can mask everything before the response.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Example:
    instruction: str
    input: str = ""
    context: str = ""
    output: str = ""


@dataclass(frozen=True)
class SectionTemplate:
    """A fixed-text template: a system preamble, then titled sections, then the response header."""

    name: str
    system: str
    system_with_input: str
    instruction: str
    input: str
    context: str
    response: str

    def prompt(self, ex: Example, tokenizer=None) -> str:
        has_extra = bool(ex.input or ex.context)
        parts = [self.system_with_input if has_extra else self.system]
        parts.append(self.instruction + ex.instruction)
        if ex.input:
            parts.append(self.input + ex.input)
        if ex.context:
            parts.append(self.context + ex.context)
        parts.append(self.response)
        return "\n\n".join(parts)

    def followup(self, ex: Example, tokenizer=None) -> str:
        """A later user turn of a conversation, after the previous answer."""
        return "\n\n" + self.instruction + _user_text(ex) + "\n\n" + self.response


@dataclass(frozen=True)
class VicunaTemplate:
    name: str = "vicuna"
    system: str = (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )

    def prompt(self, ex: Example, tokenizer=None) -> str:
        return f"{self.system} USER: {_user_text(ex)} ASSISTANT:"

    def followup(self, ex: Example, tokenizer=None) -> str:
        return f" USER: {_user_text(ex)} ASSISTANT:"


@dataclass(frozen=True)
class ChatTemplate:
    """The tokenizer's own chat template (the model was trained with it)."""

    name: str = "chat"

    def prompt(self, ex: Example, tokenizer=None) -> str:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UserError("this tokenizer has no chat template: use --template alpaca, vicuna, spanish or none")
        messages = [{"role": "user", "content": _user_text(ex)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass(frozen=True)
class PlainTemplate:
    name: str = "none"

    def prompt(self, ex: Example, tokenizer=None) -> str:
        return _user_text(ex)

    def followup(self, ex: Example, tokenizer=None) -> str:
        return "\n\n" + _user_text(ex) + "\n\n"


def _user_text(ex: Example) -> str:
    return "\n\n".join(p for p in (ex.instruction, ex.input, ex.context) if p)


ALPACA = SectionTemplate(
    name="alpaca",
    system="Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    system_with_input=(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request."
    ),
    instruction="### Instruction:\n",
    input="### Input:\n",
    context="### Context:\n",
    response="### Response:\n",
)

SPANISH = SectionTemplate(
    name="spanish",
    system=(
        "A continuación hay una instrucción que describe una tarea. "
        "Escriba una respuesta que complete adecuadamente lo que se pide."
    ),
    system_with_input=(
        "A continuación hay una instrucción que describe una tarea, junto con una entrada que proporciona "
        "más contexto. Escriba una respuesta que complete adecuadamente lo que se pide."
    ),
    instruction="### Instrucción:\n",
    input="### Entrada:\n",
    context="### Contexto:\n",
    response="### Respuesta:\n",
)

TEMPLATES = {t.name: t for t in (ChatTemplate(), ALPACA, VicunaTemplate(), SPANISH, PlainTemplate())}


def get_template(name: str):
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UserError(f"unknown template {name!r}: use one of {', '.join(TEMPLATES)}") from None
