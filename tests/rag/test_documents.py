"""Tests for parsing uploads and folders into source documents."""

import json
import pickle
from pathlib import Path

import pytest

from rag.documents import DocumentParseError, SourceDocument, content_hash, parse_path, parse_upload


def pdf_bytes(*, pages: list[list[str]], title: str | None = None) -> bytes:
    """A minimal valid PDF whose pages show `pages` lines in Helvetica (empty list: no text)."""
    page_count = len(pages)
    font_number = 3 + 2 * page_count
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids ["
        + b" ".join(f"{3 + 2 * index} 0 R".encode() for index in range(page_count))
        + f"] /Count {page_count} >>".encode(),
    ]
    for index, lines in enumerate(pages):
        page_number = 3 + 2 * index
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 {font_number} 0 R >> >> /Contents {page_number + 1} 0 R >>".encode()
        )
        if lines:
            operators = ["BT", "/F1 12 Tf", "72 720 Td"]
            for line_index, line in enumerate(lines):
                if line_index:
                    operators.append("0 -16 Td")
                operators.append(f"({line}) Tj")
            operators.append("ET")
        else:
            # Vector graphics only, like a scanned page without OCR: there is no text to find.
            operators = ["0 0 0 RG", "72 72 m 300 300 l S"]
        content = "\n".join(operators).encode()
        objects.append(f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    info_number = None
    if title is not None:
        objects.append(f"<< /Title ({title}) >>".encode())
        info_number = len(objects)

    output = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(output))
        output += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref_offset = len(output)
    output += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        output += f"{offset:010d} 00000 n \n".encode()
    trailer = f"<< /Size {len(objects) + 1} /Root 1 0 R"
    if info_number is not None:
        trailer += f" /Info {info_number} 0 R"
    output += f"trailer\n{trailer} >>\nstartxref\n{xref_offset}\n%%EOF\n".encode()
    return bytes(output)


def jsonl(*records: object) -> bytes:
    return "\n".join(json.dumps(record) for record in records).encode()


# --- formats ------------------------------------------------------------------------------


def test_beir_jsonl_keeps_ids_titles_text_and_metadata():
    data = jsonl(
        {"_id": "doc1", "title": "Aspirin", "text": "Aspirin reduces fever.", "metadata": {"url": "u1"}},
        {"_id": "doc2", "title": "", "text": "Ibuprofen is an NSAID."},
    )

    documents = parse_upload(filename="corpus.jsonl", data=data)

    assert documents == [
        SourceDocument(external_id="doc1", title="Aspirin", text="Aspirin reduces fever.", metadata={"url": "u1"}),
        SourceDocument(external_id="doc2", title="", text="Ibuprofen is an NSAID.", metadata={}),
    ]


def test_generic_jsonl_accepts_int_ids_and_skips_blank_lines_and_bom():
    data = (
        "\ufeff"
        + json.dumps({"id": 7, "text": "Seven."})
        + "\n\n   \n"
        + json.dumps({"external_id": "x-1", "text": "Ex one.", "title": "X"})
        + "\n"
    ).encode()

    documents = parse_upload(filename="export.jsonl", data=data)

    assert [(d.external_id, d.title, d.text) for d in documents] == [("7", "", "Seven."), ("x-1", "X", "Ex one.")]


def test_txt_uses_filename_as_id_and_stem_as_title():
    documents = parse_upload(filename="notes/returns policy.txt", data=b"\n  Refunds take 14 days.\n")

    assert documents == [
        SourceDocument(external_id="notes/returns policy.txt", title="returns policy", text="Refunds take 14 days.")
    ]


def test_markdown_title_is_first_level_one_heading_outside_code():
    text = "```sh\n# not a title\n```\n## Sub\n# Shipping Guide #\nWe ship worldwide.\n"

    [document] = parse_upload(filename="guide.md", data=text.encode())

    assert document.title == "Shipping Guide"
    assert document.external_id == "guide.md"
    assert "We ship worldwide." in document.text


def test_markdown_without_heading_falls_back_to_stem():
    [document] = parse_upload(filename="faq.markdown", data=b"Just text.")

    assert document.title == "faq"


def test_pdf_text_layer_pages_and_metadata_title():
    data = pdf_bytes(pages=[["Hello PDF world.", "Second line here."], ["Page two text."]], title="Annual Report")

    [document] = parse_upload(filename="report.pdf", data=data)

    assert document.external_id == "report.pdf"
    assert document.title == "Annual Report"
    assert "Hello PDF world." in document.text
    assert "Second line here." in document.text
    # Pages are separated by a blank line so chunking treats them as separate paragraphs.
    first_page, second_page = document.text.split("\n\n")
    assert "Page two text." in second_page and "Page two" not in first_page


def test_pdf_without_title_uses_stem():
    [document] = parse_upload(filename="manual.PDF", data=pdf_bytes(pages=[["Only page."]]))

    assert document.title == "manual"
    assert document.text == "Only page."


# --- errors -------------------------------------------------------------------------------


def test_pdf_without_text_layer_is_rejected():
    with pytest.raises(DocumentParseError, match=r"^scan\.pdf: PDF has no text layer"):
        parse_upload(filename="scan.pdf", data=pdf_bytes(pages=[[]]))


def test_unreadable_pdf_is_rejected():
    with pytest.raises(DocumentParseError, match=r"^broken\.pdf: could not be read as a PDF"):
        parse_upload(filename="broken.pdf", data=b"%PDF-1.4 this is not really a pdf")


def test_unsupported_suffix():
    with pytest.raises(DocumentParseError, match=r"^table\.csv: unsupported file type '\.csv'"):
        parse_upload(filename="table.csv", data=b"a,b")


def test_invalid_utf8_names_byte_offset():
    with pytest.raises(DocumentParseError, match=r"^latin\.txt: is not valid UTF-8 \(byte offset 5\)"):
        parse_upload(filename="latin.txt", data=b"caf\xc3\xa9\xff")


def test_invalid_utf8_offset_counts_the_byte_order_mark():
    with pytest.raises(DocumentParseError, match=r"\(byte offset 5\)"):
        parse_upload(filename="bom.md", data=b"\xef\xbb\xbfab\xff")


def test_nul_bytes_rejected():
    with pytest.raises(DocumentParseError, match=r"^bin\.txt: contains NUL bytes"):
        parse_upload(filename="bin.txt", data=b"abc\x00def")


def test_blank_text_file_rejected():
    with pytest.raises(DocumentParseError, match=r"^blank\.md: is empty"):
        parse_upload(filename="blank.md", data=b" \n\t\n")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", r"not valid JSON"),
        ("[1, 2]", r"expected a JSON object, got list"),
        ('{"text": "no id"}', r'missing document id \("_id", "external_id" or "id"\)'),
        ('{"_id": "a"}', r"document 'a' is missing \"text\""),
        ('{"_id": 1.5, "text": "t"}', r'"_id" must be a string or an integer, got float'),
        ('{"id": true, "text": "t"}', r'"id" must be a string or an integer, got bool'),
        ('{"id": "a", "text": 3}', r'"text" of document \'a\' must be a string, got int'),
        ('{"id": "a", "text": "t", "title": null}', r'"title" of document \'a\' must be a string, got NoneType'),
        ('{"id": "a", "text": "t", "metadata": [1]}', r'"metadata" of document \'a\' must be a JSON object'),
        ('{"id": "a", "text": "   "}', r"document 'a' is empty"),
        ('{"id": "a", "text": "x\\u0000y"}', r"document 'a' contains NUL characters"),
    ],
)
def test_jsonl_errors_name_file_and_line(line: str, problem: str):
    data = (json.dumps({"id": "ok", "text": "fine"}) + "\n\n" + line + "\n").encode()

    with pytest.raises(DocumentParseError, match=r"^bad\.jsonl, line 3: " + problem) as raised:
        parse_upload(filename="bad.jsonl", data=data)

    assert raised.value.filename == "bad.jsonl"
    assert raised.value.line == 3


def test_parse_error_survives_pickling():
    error = DocumentParseError("not valid JSON", filename="a.jsonl", line=4)

    copy = pickle.loads(pickle.dumps(error))

    assert (str(copy), copy.filename, copy.line, copy.problem) == (str(error), "a.jsonl", 4, "not valid JSON")


def test_jsonl_duplicate_ids_name_both_lines():
    data = jsonl({"id": 1, "text": "a"}, {"id": 2, "text": "b"}, {"_id": "1", "text": "c"})

    with pytest.raises(DocumentParseError, match=r"^dup\.jsonl, line 3: duplicate document id '1' \(first seen on line 1\)"):
        parse_upload(filename="dup.jsonl", data=data)


def test_jsonl_with_only_blank_lines_rejected():
    with pytest.raises(DocumentParseError, match=r"^empty\.jsonl: is empty"):
        parse_upload(filename="empty.jsonl", data=b"\n\n")


# --- folders ------------------------------------------------------------------------------


def write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)


def test_folder_walk_is_sorted_recursive_and_skips_hidden_and_unsupported(tmp_path: Path):
    write(tmp_path / "b.txt", "B text.")
    write(tmp_path / "a" / "z.md", "# Zed\nZ text.")
    write(tmp_path / "a" / "deeper" / "c.pdf", pdf_bytes(pages=[["C text."]]))
    write(tmp_path / "corpus.jsonl", jsonl({"_id": "j1", "text": "J text."}))
    write(tmp_path / ".hidden.txt", "hidden")
    write(tmp_path / ".git" / "notes.txt", "hidden dir")
    write(tmp_path / "image.png", b"\x89PNG")

    documents = parse_path(tmp_path)

    assert [(d.external_id, d.title, d.text) for d in documents] == [
        ("a/deeper/c.pdf", "c", "C text."),
        ("a/z.md", "Zed", "# Zed\nZ text."),
        ("b.txt", "b", "B text."),
        ("j1", "", "J text."),
    ]


def test_single_file_path_uses_its_name(tmp_path: Path):
    write(tmp_path / "deep" / "one.txt", "One.")

    assert parse_path(tmp_path / "deep" / "one.txt") == [SourceDocument(external_id="one.txt", title="one", text="One.")]


def test_folder_without_supported_files_rejected(tmp_path: Path):
    write(tmp_path / "data.csv", "a,b")
    write(tmp_path / ".secret.txt", "hidden")

    with pytest.raises(DocumentParseError, match="folder has no supported files"):
        parse_path(tmp_path)


def test_duplicate_ids_across_folder_rejected(tmp_path: Path):
    write(tmp_path / "a.jsonl", jsonl({"id": "same", "text": "one"}))
    write(tmp_path / "b.jsonl", jsonl({"id": "same", "text": "two"}))

    with pytest.raises(DocumentParseError, match=r"^b\.jsonl: duplicate document id 'same' \(also in a\.jsonl\)"):
        parse_path(tmp_path)


def test_error_in_nested_file_names_its_relative_path(tmp_path: Path):
    write(tmp_path / "ok.txt", "fine")
    write(tmp_path / "sub" / "bad.jsonl", '{"id": "x", "text": "ok"}\n{oops\n')

    with pytest.raises(DocumentParseError, match=r"^sub/bad\.jsonl, line 2: not valid JSON"):
        parse_path(tmp_path)


def test_missing_path_rejected(tmp_path: Path):
    with pytest.raises(DocumentParseError, match="no such file or folder"):
        parse_path(tmp_path / "nope")


# --- content hash -------------------------------------------------------------------------


def test_content_hash_depends_on_content_not_id_or_key_order():
    document = SourceDocument(external_id="a", title="T", text="Body", metadata={"x": 1, "y": 2})
    same_content = SourceDocument(external_id="b", title="T", text="Body", metadata={"y": 2, "x": 1})

    assert content_hash(document) == content_hash(same_content)
    assert len(content_hash(document)) == 64
    assert content_hash(document) != content_hash(SourceDocument(external_id="a", title="T", text="Body!"))
    assert content_hash(document) != content_hash(
        SourceDocument(external_id="a", title="T2", text="Body", metadata={"x": 1, "y": 2})
    )
    assert content_hash(document) != content_hash(
        SourceDocument(external_id="a", title="T", text="Body", metadata={"x": 1, "y": 3})
    )


def test_overlong_ids_and_nul_in_metadata_are_refused_by_name():
    import json

    import pytest

    from rag.documents import MAX_EXTERNAL_ID_LENGTH, DocumentParseError, parse_upload

    long_id = "x" * (MAX_EXTERNAL_ID_LENGTH + 1)
    with pytest.raises(DocumentParseError, match="limit is 512") as error:
        parse_upload(filename="c.jsonl", data=json.dumps({"_id": long_id, "text": "t"}).encode())
    assert "c.jsonl" in str(error.value) and "line 1" in str(error.value)
    with pytest.raises(DocumentParseError, match="NUL"):
        parse_upload(filename="c.jsonl", data=json.dumps({"_id": "a", "text": "t", "metadata": {"k": ["ok", "bad\x00"]}}).encode())
    # a literal backslash-u0000 text is not a NUL character
    [document] = parse_upload(filename="c.jsonl", data=json.dumps({"_id": "a", "text": "t", "metadata": {"k": "\\u0000"}}).encode())
    assert document.metadata == {"k": "\\u0000"}
