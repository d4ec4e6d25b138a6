"""Metalink 4 (RFC 5854) documents: files, hashes, pieces, mirrors; unsafe or malformed XML."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._digest import Checksum
from bgtransfer._protocol._metalink import (
    LOWEST_PRIORITY,
    MetalinkUrl,
    parse_metalink,
)
from bgtransfer._protocol._pieces import PieceHasher

# RFC 5854 §1.1, the brief example, byte for byte.
RFC_BRIEF = b"""<?xml version="1.0" encoding="UTF-8"?>
<metalink xmlns="urn:ietf:params:xml:ns:metalink">
  <file name="example.ext">
    <size>14471447</size>
    <url>ftp://ftp.example.com/example.ext</url>
    <url>http://example.com/example.ext</url>
    <metaurl mediatype="torrent">
    http://example.com/example.ext.torrent</metaurl>
  </file>
</metalink>
"""

CONTENT = bytes(range(251)) * 3000  # 753000 bytes: 3 pieces of 262144 (the last shorter)
PIECE = 262144


def mirrorbrain_document(content: bytes = CONTENT, piece: int = PIECE) -> bytes:
    """A document shaped like MirrorBrain's .meta4 output, with the real hashes of
    ``content``."""
    pieces = "".join(
        f"      <hash>{hashlib.sha1(content[i : i + piece]).hexdigest()}</hash>\n"
        for i in range(0, len(content), piece)
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<metalink xmlns="urn:ietf:params:xml:ns:metalink">
  <generator>MirrorBrain/2.19.0</generator>
  <origin dynamic="true">http://download.example.org/dist/tool-1.0.tar.gz.meta4</origin>
  <published>2024-03-04T01:11:48Z</published>
  <publisher>
    <name>Example Project</name>
    <url>https://download.example.org</url>
  </publisher>
  <file name="tool-1.0.tar.gz">
    <size>{len(content)}</size>
    <hash type="md5">{hashlib.md5(content).hexdigest()}</hash>
    <hash type="sha-1">{hashlib.sha1(content).hexdigest()}</hash>
    <hash type="sha-256">{hashlib.sha256(content).hexdigest()}</hash>
    <pieces length="{piece}" type="sha-1">
{pieces}    </pieces>
    <url location="jp" priority="3">http://ftp.example.ac.jp/pub/tool-1.0.tar.gz</url>
    <url location="de" priority="1">https://mirror.example.de/tool-1.0.tar.gz</url>
    <url location="us" priority="2">http://us.example.com/tool-1.0.tar.gz</url>
    <url location="fr">rsync://rsync.example.fr/tool-1.0.tar.gz</url>
    <url location="DE" priority="4">https://mirror.example.de/tool-1.0.tar.gz</url>
    <metaurl mediatype="torrent" priority="1">http://x.example/tool.torrent</metaurl>
  </file>
</metalink>
""".encode()


def doc(file_body: str, name: str = "f.bin", extra: str = "") -> bytes:
    return (
        f'<metalink xmlns="urn:ietf:params:xml:ns:metalink">{extra}'
        f'<file name="{name}">{file_body}</file></metalink>'
    ).encode()


def test_rfc_brief_example():
    ml = parse_metalink(RFC_BRIEF)
    (f,) = ml.files
    assert f.name == "example.ext"
    assert f.size == 14471447
    assert f.urls == (MetalinkUrl("http://example.com/example.ext", LOWEST_PRIORITY, None),)
    assert f.skipped_urls == 2  # the ftp url and the torrent
    assert f.checksums == ()
    assert f.pieces is None
    assert ml.published is None


def test_mirrorbrain_document():
    ml = parse_metalink(mirrorbrain_document())
    assert ml.published == "2024-03-04T01:11:48Z"
    (f,) = ml.files
    assert f.size == len(CONTENT)
    assert set(f.checksums) == {
        Checksum("md5", hashlib.md5(CONTENT).digest()),
        Checksum("sha1", hashlib.sha1(CONTENT).digest()),
        Checksum("sha256", hashlib.sha256(CONTENT).digest()),
    }
    # by priority; the duplicate mirror keeps its best entry; rsync is skipped
    assert f.sources == [
        "https://mirror.example.de/tool-1.0.tar.gz",
        "http://us.example.com/tool-1.0.tar.gz",
        "http://ftp.example.ac.jp/pub/tool-1.0.tar.gz",
    ]
    assert f.urls[0] == MetalinkUrl("https://mirror.example.de/tool-1.0.tar.gz", 1, "de")
    assert f.skipped_urls == 2
    assert f.pieces is not None
    assert f.pieces.count == 3
    assert f.pieces.algorithm == "sha1"
    # the piece list checks the real content
    assert PieceHasher(f.pieces, 0).feed(CONTENT) == [(0, True), (1, True), (2, True)]


def test_strongest_piece_list_is_chosen():
    content = b"abcdefghij"
    sha1 = "".join(
        f"<hash>{hashlib.sha1(content[i : i + 4]).hexdigest()}</hash>" for i in (0, 4, 8)
    )
    sha256 = "".join(
        f"<hash>{hashlib.sha256(content[i : i + 4]).hexdigest()}</hash>" for i in (0, 4, 8)
    )
    body = (
        f'<size>10</size><pieces length="4" type="sha-1">{sha1}</pieces>'
        f'<pieces length="4" type="sha-256">{sha256}</pieces>'
        f'<pieces length="4" type="tiger">{sha1}</pieces><url>https://h/f</url>'
    )
    (f,) = parse_metalink(doc(body)).files
    assert f.pieces is not None
    assert f.pieces.algorithm == "sha256"


def test_a_piece_list_that_does_not_fit_the_size_is_dropped_with_a_note():
    four = "<hash>" + "1" * 40 + "</hash>"
    (f,) = parse_metalink(
        doc(f'<size>651</size><pieces length="262144" type="sha-1">{four * 4}</pieces>')
    ).files
    assert f.pieces is None
    assert f.notes == (
        "piece hashes ignored: 4 piece hashes for 651 bytes in pieces of 262144: expected 1",
    )
    (g,) = parse_metalink(doc(f'<pieces length="4" type="sha-1">{four}</pieces>')).files
    assert g.pieces is None
    assert "no <size>" in g.notes[0]


def test_several_files_and_unknown_hash_types():
    body = '<hash type="sha3-256">zz</hash><hash>abc</hash><url>https://h/a</url>'
    data = (
        '<metalink xmlns="urn:ietf:params:xml:ns:metalink">'
        f'<file name="a">{body}</file><file name="dir/b"><url priority="7">http://h/b</url></file>'
        "</metalink>"
    ).encode()
    a, b = parse_metalink(data).files
    assert a.checksums == ()  # unknown and untyped hashes are not whole-file hashes we know
    assert b.name == "dir/b"
    assert b.urls == (MetalinkUrl("http://h/b", 7, None),)
    assert b.size is None


def test_a_string_document_is_accepted():
    assert parse_metalink(RFC_BRIEF.decode()).files[0].name == "example.ext"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<metalink xmlns="urn:ietf:params:xml:ns:metalink"><file name="&lol2;"/></metalink>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<metalink xmlns="urn:ietf:params:xml:ns:metalink"><file name="a"><url>&x;</url></file></metalink>"""


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (BILLION_LAUGHS, "unsafe XML"),
        (XXE, "unsafe XML"),
        (b"<metalink", "not well-formed"),
        (b"", "not well-formed"),
        (b'<metalink xmlns="urn:other"/>', "root element"),
        (b'<metalink version="3.0" xmlns="http://www.metalinker.org/"/>', "Metalink 3"),
        (b'<metalink xmlns="urn:ietf:params:xml:ns:metalink"/>', "no <file>"),
        (doc("", name=""), "has no name"),
        (doc("", name="../etc/passwd"), "safe relative path"),
        (doc("", name="/etc/passwd"), "safe relative path"),
        (doc("", name="a/../../b"), "safe relative path"),
        (doc("", name="a/.."), "safe relative path"),
        (doc("", name="./a"), "safe relative path"),
        (doc("", name="a\\..\\b"), "safe relative path"),
        (doc("", name="C:evil"), "safe relative path"),
        (doc("", name="a//b"), "safe relative path"),
        (doc("<size>-1</size>"), "non-negative integer"),
        (doc("<size>12MB</size>"), "non-negative integer"),
        (doc('<hash type="sha-256">f0ad929cd259957e160ea442eb80986b5f01...</hash>'), "hexadecimal"),
        (
            doc(f'<hash type="sha-256">{"0" * 64}</hash><hash type="sha256">{"1" * 64}</hash>'),
            "two different",
        ),
        (doc('<url priority="0">https://h/f</url>'), "1..999999"),
        (doc('<url priority="1000000">https://h/f</url>'), "1..999999"),
        (doc('<url priority="high">https://h/f</url>'), "non-negative integer"),
        (doc('<url location="deu">https://h/f</url>'), "two-letter"),
        (doc('<size>4</size><pieces length="0" type="sha-1"><hash/></pieces>'), "positive"),
        (doc('<size>4</size><pieces type="sha-1"><hash/></pieces>'), "non-negative integer"),
        (
            doc('<size>4</size><pieces length="4" type="sha-1"><hash>xyz</hash></pieces>'),
            "hexadecimal",
        ),
        (
            doc('<size>4</size><pieces length="4" type="sha-1"/><pieces length="4" type="SHA-1"/>'),
            "two <pieces>",
        ),
        (
            b'<metalink xmlns="urn:ietf:params:xml:ns:metalink">'
            b'<file name="a"/><file name="a"/></metalink>',
            "two files are named 'a'",
        ),
        (doc("<url>https://h/f</url>" * 1001), "more than 1000 urls"),
    ],
)
def test_malformed_or_unsafe_documents_are_refused(data, words):
    with pytest.raises(InvalidRequest, match=words):
        parse_metalink(data)


def test_a_huge_document_is_refused_before_parsing():
    with pytest.raises(InvalidRequest, match="larger than"):
        parse_metalink(b" " * (16 * 1024 * 1024 + 1))


def test_a_file_without_usable_urls_is_kept_for_the_caller_to_report():
    (f,) = parse_metalink(doc("<url>ftp://h/f</url><url>not a url</url>")).files
    assert f.urls == ()
    assert f.skipped_urls == 2


@given(
    st.binary(min_size=0, max_size=5000),
    st.integers(min_value=1, max_value=2000),
)
@settings(max_examples=40)
def test_generated_documents_round_trip(content, piece):
    (f,) = parse_metalink(mirrorbrain_document(content, piece)).files
    assert f.size == len(content)
    assert f.pieces is not None
    assert f.pieces.count == -(-len(content) // piece)
    assert all(ok for _, ok in PieceHasher(f.pieces, 0).feed(content))


@given(st.binary(max_size=300))
def test_parse_metalink_raises_only_invalid_request(data):
    try:
        parse_metalink(data)
    except InvalidRequest:
        pass


def test_a_bare_doctype_is_refused_too():
    data = b'<!DOCTYPE metalink><metalink xmlns="urn:ietf:params:xml:ns:metalink"/>'
    with pytest.raises(InvalidRequest, match=r"refused unsafe XML \(DTDForbidden\)"):
        parse_metalink(data)


def test_unknown_types_before_known_ones_do_not_hide_them():
    sha = hashlib.sha256(b"abcd").hexdigest()
    body = (
        f'<size>4</size><hash type="ed2k">00</hash><hash type="sha-256">{sha}</hash>'
        f'<pieces length="4" type="tiger"><hash>00</hash></pieces>'
        f'<pieces length="4" type="crc32c"><hash>00</hash></pieces>'
        f'<pieces length="4" type="sha-256"><hash>{sha}</hash></pieces>'
    )
    (f,) = parse_metalink(doc(body)).files
    assert [c.algorithm for c in f.checksums] == ["sha256"]
    assert f.pieces is not None
    assert f.pieces.algorithm == "sha256"
    assert f.notes == ()


def test_crc32c_pieces_are_ignored_without_a_note():
    (f,) = parse_metalink(
        doc('<size>4</size><pieces length="4" type="crc32c"><hash>00000000</hash></pieces>')
    ).files
    assert f.pieces is None
    assert f.notes == ()


def test_boundaries_accepted():
    (f,) = parse_metalink(
        doc(
            '<url priority="999999" location="US">https://h/a</url>'
            + "".join(f"<url>https://h/{i}</url>" for i in range(999)),
            name="dir/a b.iso",
        )
    ).files
    assert f.name == "dir/a b.iso"
    assert len(f.urls) == 1000
    assert f.urls[0] == MetalinkUrl("https://h/a", 999999, "us")
    assert parse_metalink(doc("<size>99999999999999999999</size>")).files[0].size == 10**20 - 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (doc("", name="   "), "Metalink document: a <file> has no name"),
        (
            doc("", name="a&#10;b"),
            "Metalink document: file name 'a.nb' is not a safe relative path",
        ),
        (
            doc("<size>123456789012345678901</size>"),
            "non-negative integer, not '123456789012345678901'",
        ),
        (doc('<url location="éé">https://h/f</url>'), "two-letter country code, not 'éé'"),
        (
            doc('<url priority="x">https://h/f</url>'),
            "a url priority must be a non-negative integer",
        ),
        (doc("<size>x</size>"), "the size of 'f.bin' must be a non-negative integer"),
        (doc('<size>4</size><pieces length="x" type="sha-1"/>'), "a <pieces> length must be a non"),
        (
            doc('<size>4</size><pieces length="0" type="sha-1"/>'),
            "document: a <pieces> length must be positive$",
        ),
        (
            doc('<size>4</size><pieces length="4" type="sha-1"><hash>zz</hash></pieces>'),
            "piece hash 0 of 'f.bin' is not a sha1 digest in hexadecimal: 'zz'",
        ),
        (
            doc(f'<hash type="sha-1">{"ab " * 20}</hash>'),
            "the sha1 hash of 'f.bin' is not a sha1 digest",
        ),
        (
            b'<metalink xmlns="urn:ietf:params:xml:ns:metalink"/>',
            "document: it describes no <file>$",
        ),
        (
            b'<metalink xmlns="http://www.metalinker.org/"/>',
            r"Metalink 3 \(metalinker.org\) is not supported: use Metalink 4 \(RFC 5854\)$",
        ),
        (
            b'<metalink xmlns="urn:ietf:params:xml:ns:metalink">'
            b'<file name="a"/><file name="b"/><file name="b"/></metalink>',
            "two files are named 'b'",
        ),
    ],
)
def test_exact_messages(data, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_metalink(data)


def test_document_size_bound_is_inclusive():
    body = doc("<url>https://h/f</url>")
    padded = body + b" " * (16 * 1024 * 1024 - len(body))
    assert parse_metalink(padded).files[0].name == "f.bin"


def test_file_count_bound():
    many = b"".join(b'<file name="f%d"/>' % i for i in range(10_001))
    with pytest.raises(InvalidRequest, match="more than 10000 files"):
        parse_metalink(
            b'<metalink xmlns="urn:ietf:params:xml:ns:metalink">' + many + b"</metalink>"
        )
    ok = b"".join(b'<file name="f%d"/>' % i for i in range(10_000))
    data = b'<metalink xmlns="urn:ietf:params:xml:ns:metalink">' + ok + b"</metalink>"
    assert len(parse_metalink(data).files) == 10_000
