"""Checksum files next to a download: SHA256SUMS, file.sha256, BSD tags (--checksum-from)."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._digest import Checksum
from bgtransfer._protocol._sums import checksum_from_sums, file_name_of

ISO = hashlib.sha256(b"iso").hexdigest()
TXT = hashlib.sha256(b"txt").hexdigest()
MD5 = hashlib.md5(b"iso").hexdigest()

# The shape of a distribution's SHA256SUMS: text and binary mode lines.
SHA256SUMS = f"""{TXT}  README.txt
{ISO} *ubuntu-24.04-desktop-amd64.iso
"""


def test_gnu_lines_text_and_binary_mode():
    got = checksum_from_sums(SHA256SUMS, "ubuntu-24.04-desktop-amd64.iso", sums_name="SHA256SUMS")
    assert got == Checksum("sha256", bytes.fromhex(ISO))
    assert checksum_from_sums(SHA256SUMS.encode(), "README.txt").digest == bytes.fromhex(TXT)


def test_single_space_and_relative_paths():
    assert checksum_from_sums(f"{ISO} ./dist/a.iso\n", "a.iso").hex() == ISO


def test_bsd_tag_lines():
    text = f"SHA256 (a.iso) = {ISO}\nMD5 (a.iso) = {MD5}\n"
    with pytest.raises(InvalidRequest, match="several different lines"):
        checksum_from_sums(text, "a.iso")
    assert checksum_from_sums(f"SHA256 (a (1).iso) = {ISO}", "a (1).iso").hex() == ISO
    assert checksum_from_sums(f"MD5 (a.iso) = {MD5}", "a.iso") == Checksum(
        "md5", bytes.fromhex(MD5)
    )
    with pytest.raises(InvalidRequest, match="not supported"):
        checksum_from_sums(f"BLAKE2b (a.iso) = {ISO}", "a.iso")


def test_a_lone_digest_applies_to_the_file_beside_it():
    assert checksum_from_sums(f"{ISO}\n", "anything.bin").hex() == ISO
    # the algorithm by the file's name when the length alone would not say
    got = checksum_from_sums(MD5, "x", sums_name="https://h/x.iso.md5")
    assert got.algorithm == "md5"
    with pytest.raises(InvalidRequest, match="ambiguous"):
        checksum_from_sums(f"{ISO}\n{TXT}  b.txt\n", "b.txt")


def test_algorithm_from_the_sums_name_or_the_length():
    assert checksum_from_sums(f"{ISO}  f", "f").algorithm == "sha256"
    sha512 = hashlib.sha512(b"x").hexdigest()
    assert checksum_from_sums(f"{sha512}  f", "f", sums_name="SHA512SUMS").algorithm == "sha512"
    assert checksum_from_sums(f"{sha512}  f", "f").algorithm == "sha512"
    with pytest.raises(InvalidRequest, match="not a digest of a known algorithm"):
        checksum_from_sums(f"{ISO}  f", "f", sums_name="SHA512SUMS")
    with pytest.raises(InvalidRequest, match="7 hex digits"):
        checksum_from_sums("abcdef0  f", "f")


def test_escaped_names():
    assert checksum_from_sums(f"\\{ISO}  a\\\\b.iso", "a\\b.iso").hex() == ISO


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "lists no checksum"),
        ("# only a comment\n\n", "lists no checksum"),
        ("not a checksum line at all!", "cannot read"),
        (SHA256SUMS, "no line for 'other.iso'"),
        (b"\xff\xfe", "not UTF-8"),
        ("x" * (4 * 1024 * 1024 + 1), "larger than"),
    ],
)
def test_refused(text, words):
    with pytest.raises(InvalidRequest, match=words):
        checksum_from_sums(text, "other.iso")


def test_the_same_line_twice_is_fine():
    assert checksum_from_sums(f"{ISO}  a\n{ISO.upper()} *a\n", "a").hex() == ISO


def test_file_name_of():
    assert file_name_of("https://h/releases/v1/tool%20x.tar.gz?sig=1") == "tool x.tar.gz"
    assert file_name_of("https://h/") == ""


@given(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")),
        min_size=1,
        max_size=30,
    ).filter(lambda s: "/" not in s and s.strip() == s and "\\" not in s),
    st.binary(max_size=64),
)
def test_any_name_round_trips_through_a_gnu_line(name, content):
    digest = hashlib.sha256(content).hexdigest()
    text = f"{TXT}  other-file\n{digest}  {name}\n"
    if name == "other-file":
        return
    assert checksum_from_sums(text, name).hex() == digest


@given(st.text(max_size=200))
def test_raises_only_invalid_request(text):
    try:
        checksum_from_sums(text, "f")
    except InvalidRequest:
        pass


def test_algorithm_from_a_sums_name_with_an_extension():
    sha1 = hashlib.sha1(b"x").hexdigest()
    md5_len_hex = "0" * 32
    assert checksum_from_sums(md5_len_hex, "f", sums_name="f.md5.txt").algorithm == "md5"
    assert checksum_from_sums(md5_len_hex, "f", sums_name="MD5SUMS").algorithm == "md5"
    assert checksum_from_sums(sha1, "f", sums_name="https://h/SHA1SUMS.asc").algorithm == "sha1"
    assert checksum_from_sums(sha1, "f", sums_name="notes.txt").algorithm == "sha1"  # by length
    # the name wins over the length: a sha256-long digest in a .sha512.txt file is refused
    with pytest.raises(InvalidRequest, match="64 hex digits"):
        checksum_from_sums(ISO, "f", sums_name="f.sha512.txt")


def test_comments_and_blank_lines_before_entries_are_skipped():
    text = f"# generated\n\n{TXT}  a.txt\n# more\n{ISO}  b.iso\n"
    assert checksum_from_sums(text, "b.iso").hex() == ISO


def test_escaped_names_in_both_formats():
    assert checksum_from_sums(f"\\{ISO}  a\\nb", "a\nb").hex() == ISO
    assert checksum_from_sums(f"\\SHA256 (a\\nb) = {ISO}", "a\nb").hex() == ISO
    # without the leading backslash the name is taken as written
    assert checksum_from_sums(f"{ISO}  a\\nb", "a\\nb").hex() == ISO
    assert checksum_from_sums(f"SHA256 (a\\nb) = {ISO}", "a\\nb").hex() == ISO


def test_size_bound_is_inclusive():
    line = f"{ISO}  f\n"
    text = line + "#" * (4 * 1024 * 1024 - len(line))
    assert checksum_from_sums(text, "f").hex() == ISO


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"\xff", "checksum file: not UTF-8 text"),
        ("", "checksum file: it lists no checksum"),
        (f"{ISO}\n{TXT}  f", "checksum file: a lone digest among named ones is ambiguous"),
        (f"WHIRLPOOL (f) = {ISO}", "checksum file: the algorithm it names is not supported"),
        ("?" * 200, "checksum file: cannot read the line '" + "?" * 120 + "'"),
    ],
)
def test_exact_messages(text, message):
    with pytest.raises(InvalidRequest, match="^" + re.escape(message) + "$"):
        checksum_from_sums(text, "f")
