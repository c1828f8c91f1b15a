import json
import sys

import pytest

from llmshrink.data.corpora import (
    Document,
    brown_text,
    load_corpus,
    split_by_document,
    split_by_genre,
    strip_gutenberg,
)
from llmshrink.errors import UserError

GUTENBERG = """The Project Gutenberg EBook of Hamlet
This eBook is for the use of anyone anywhere at no cost.
*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

HAMLET
To be, or not to be.

End of the Project Gutenberg EBook of Hamlet
*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***
Licence text that must go.
"""


def test_strip_gutenberg_removes_header_and_licence():
    out = strip_gutenberg(GUTENBERG)
    assert out == "HAMLET\nTo be, or not to be.\n"
    assert strip_gutenberg("Plain text.\n") == "Plain text.\n"


def test_strip_gutenberg_old_small_print():
    text = "header\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\nBody line.\n"
    assert strip_gutenberg(text) == "Body line.\n"


def _docs(n=20):
    return [Document(f"play{i}", "x" * (1000 + 37 * i)) for i in range(n)]


def test_split_by_document_disjoint_complete_reproducible():
    docs = _docs()
    a = split_by_document(docs, 5000)
    b = split_by_document(list(reversed(docs)), 5000)  # order of input does not matter
    names = lambda ds: sorted(d.name for d in ds)  # noqa: E731
    assert names(a["calib"]) == names(b["calib"]) and names(a["eval"]) == names(b["eval"])
    assert not set(names(a["calib"])) & set(names(a["eval"]))
    assert sorted(names(a["calib"]) + names(a["eval"])) == names(docs)
    assert sum(len(d.text) for d in a["eval"]) >= 5000
    assert len(a["eval"]) < len(docs)


def test_txt_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "skip.md").write_text("not text")
    c = load_corpus(str(tmp_path))
    assert [d.text for d in c.documents] == ["first", "second"]
    assert load_corpus(str(tmp_path / "a.txt")).documents[0].text == "first"


def test_jsonl_formats(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [
        {"text": "plain"},
        {"instruction": "Do it", "input": "this", "output": "done"},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    texts = [d.text for d in load_corpus(str(path)).documents]
    assert texts == ["plain", "Do it\n\nthis\n\ndone", "hi\n\nhello"]


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2"):
        load_corpus(str(path))


def test_jsonl_missing_fields(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(UserError, match=r"f\.jsonl:2: record has no 'text'"):
        load_corpus(str(path))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no-such-corpus", "unknown corpus 'no-such-corpus'"),
        ("shakespeare:test", "no split 'test'"),
        ("missing/dir/file.txt", "no such file or folder"),
        ("hf:", "hf:NAME"),
    ],
)
def test_bad_corpus_specs(spec, match):
    with pytest.raises(UserError, match=match):
        load_corpus(spec)


def test_empty_and_non_utf8(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="is empty"):
        load_corpus(str(empty))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"ok \xff\xfe bad")
    with pytest.raises(UserError, match="not UTF-8"):
        load_corpus(str(binary))
    folder = tmp_path / "nothing"
    folder.mkdir()
    with pytest.raises(UserError, match="holds no .txt files"):
        load_corpus(str(folder))


def test_hf_without_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(UserError, match=r"llmshrink\[hf\]"):
        load_corpus("hf:wikitext:wikitext-2-raw-v1:test")


@pytest.mark.e2e
def test_shakespeare_splits_are_disjoint_plays_and_reproducible():
    calib, evals, whole = (load_corpus(s) for s in ("shakespeare:calib", "shakespeare:eval", "shakespeare"))
    calib_names = {d.name for d in calib.documents}
    eval_names = {d.name for d in evals.documents}
    assert not calib_names & eval_names
    assert calib_names | eval_names == {d.name for d in whole.documents}
    assert len(whole.documents) == 42  # Gutenberg texts only, First Folio duplicates skipped
    assert not any(n.endswith("_f") for n in calib_names | eval_names)
    assert evals.chars >= 250_000 and calib.chars > 10 * evals.chars
    assert not any("Project Gutenberg" in d.text for d in whole.documents)
    again = load_corpus("shakespeare:eval")
    assert [d.name for d in again.documents] == [d.name for d in evals.documents]
    # No play's text is in both: not even a long line of one split appears in the other.
    calib_text = "\n".join(d.text for d in calib.documents)
    lines = [ln for d in evals.documents for ln in d.text.splitlines() if len(ln) > 60][:200]
    assert lines and sum(ln in calib_text for ln in lines) < len(lines) // 10


BROWN = """

\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd ``/`` no/at evidence/nn ''/'' was/bedz found/vbn ./.
Atlanta's/np$ mayor/nn (/( Mr./np Hartsfield/np )/) agreed/vbd ,/, and/cc left/vbd ;/. why/wrb ?/.


\tA/at new/jj paragraph/nn --/-- at/in last/ap !/.
"""


def test_brown_text_drops_tags_and_reattaches_punctuation():
    assert brown_text(BROWN) == (
        'The Fulton County Grand Jury said "no evidence" was found. Atlanta\'s mayor (Mr. Hartsfield) agreed, '
        "and left; why?\nA new paragraph -- at last!\n")


def test_split_by_genre_holds_out_texts_of_every_genre():
    docs = [Document(f"c{g}{i:02d}", "x") for g in "abk" for i in range(1, 6)]
    split = split_by_genre(docs, 1)
    assert sorted(d.name[1] for d in split["eval"]) == ["a", "b", "k"]
    assert len(split["calib"]) == 12 and not {d.name for d in split["calib"]} & {d.name for d in split["eval"]}
    again = split_by_genre(list(reversed(docs)), 1)["eval"]  # the order documents come in does not matter
    assert {d.name for d in again} == {d.name for d in split["eval"]}


@pytest.mark.e2e
def test_brown_splits_cover_every_genre_and_read_as_prose():
    calib, evals = load_corpus("brown:calib"), load_corpus("brown:eval")
    assert len(calib.documents) + len(evals.documents) == 500
    assert sorted(d.name[1] for d in evals.documents) == list("abcdefghjklmnpr")
    text = evals.documents[0].text
    assert "/at " not in text and "``" not in text and " ." not in text and text.count("\n") > 10


@pytest.mark.e2e
def test_moby_dick_is_the_book_in_order_and_its_splits_are_whole_chapters():
    book = load_corpus("moby")
    assert len(book.documents) == 136 and book.documents[0].name == "chapter_1"
    assert book.documents[0].text.startswith("CHAPTER 1. Loomings.\n\nCall me Ishmael.")
    assert [d.name for d in book.documents[-2:]] == ["chapter_135", "epilogue"]
    calib, evals = load_corpus("moby:calib"), load_corpus("moby:eval")
    assert {d.name for d in calib.documents} | {d.name for d in evals.documents} == {d.name for d in book.documents}
    assert not {d.name for d in calib.documents} & {d.name for d in evals.documents}
    assert 250_000 <= evals.chars < 300_000


@pytest.mark.e2e
def test_sotu_holds_one_address_a_document_from_washington_on():
    sotu = load_corpus("sotu")
    assert sotu.documents[0].name == "1790_george_washington_n" and len(sotu.documents) == 233
    assert sotu.documents[0].text.startswith("Fellow-Citizens of the Senate")
    assert len(load_corpus("sotu:eval").documents) + len(load_corpus("sotu:calib").documents) == 233
