import pytest

from llmshrink.data.templates import TEMPLATES, Example, get_template
from llmshrink.errors import UserError


def test_alpaca_exact():
    p = get_template("alpaca").prompt(Example("Name a color."))
    assert p == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nName a color.\n\n### Response:\n"
    )
    with_input = get_template("alpaca").prompt(Example("Translate.", input="hola"))
    assert "paired with an input" in with_input and "### Input:\nhola\n\n### Response:\n" in with_input


def test_spanish_sections():
    t = get_template("spanish")
    p = t.prompt(Example("Resume el texto.", input="Un texto.", context="Un contexto."))
    assert p.startswith("A continuación hay una instrucción que describe una tarea, junto con una entrada")
    i, e, c, r = (p.index(s) for s in ("### Instrucción:", "### Entrada:", "### Contexto:", "### Respuesta:"))
    assert i < e < c < r and p.endswith("### Respuesta:\n")
    bare = t.prompt(Example("Di hola."))
    assert "### Entrada:" not in bare and "### Contexto:" not in bare
    assert bare.startswith("A continuación hay una instrucción que describe una tarea. ")


def test_vicuna_and_none():
    assert get_template("vicuna").prompt(Example("Hi?")).endswith("USER: Hi? ASSISTANT:")
    assert get_template("none").prompt(Example("raw", input="more")) == "raw\n\nmore"


def test_chat_uses_tokenizer_template(tokenizer):
    p = get_template("chat").prompt(Example("Hello"), tokenizer)
    assert p == "<|user|>Hello</s><|assistant|>"


def test_chat_without_template_errors():
    from tests.conftest import make_tokenizer

    with pytest.raises(UserError, match="no chat template"):
        get_template("chat").prompt(Example("Hello"), make_tokenizer(chat_template=None))


def test_unknown_template():
    with pytest.raises(UserError, match="unknown template 'chatml'"):
        get_template("chatml")
    assert set(TEMPLATES) == {"chat", "alpaca", "vicuna", "spanish", "none"}
