"""Canonical forms of personal input, and the Individual Number scan."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.validation.documents import DocumentType, last4, normalise_document_number
from app.validation.email import normalise_email
from app.validation.kana import kana_index_form, normalise_kana
from app.validation.mynumber import (
    contains_individual_number,
    is_individual_number,
    reject_individual_number,
)
from app.validation.names import display_name, normalise_name
from app.validation.phone import format_national, normalise_phone
from app.validation.postal import normalise_postal_code

# --- Individual Numbers, generated independently of the module under test ---------------------

# Weights of the 11 leading digits read left to right: Qn for n = 11 … 1.
WEIGHTS = (6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2)


def check_digit(prefix: str) -> int:
    remainder = sum(int(d) * w for d, w in zip(prefix, WEIGHTS, strict=True)) % 11
    return 0 if remainder <= 1 else 11 - remainder


def with_check_digit(prefix: str) -> str:
    return prefix + str(check_digit(prefix))


def with_wrong_check_digit(prefix: str, offset: int) -> str:
    return prefix + str((check_digit(prefix) + offset) % 10)


prefixes = st.text(alphabet="0123456789", min_size=11, max_size=11)
valid_numbers = prefixes.map(with_check_digit)
invalid_numbers = st.builds(with_wrong_check_digit, prefixes, st.integers(1, 9))
FULL_WIDTH = str.maketrans("0123456789 -", "０１２３４５６７８９　－")


def written_forms(number: str) -> list[str]:
    a, b, c = number[:4], number[4:8], number[8:]
    forms = [
        number,
        f"{a} {b} {c}",
        f"{a}-{b}-{c}",
        f"{a} - {b} - {c}",
        f"{a}ー{b}ー{c}",  # katakana prolonged sound mark, often typed as a hyphen
        f"{a}−{b}−{c}",  # minus sign
        f"{number[:3]} {number[3:7]} {number[7:]}",
    ]
    return forms + [form.translate(FULL_WIDTH) for form in forms]


CONTEXTS = [
    "{}",
    "マイナンバーは{}です",
    "番号: {}。",
    "No.{} (copy)",
    "東京都千代田区千代田1-2-3 {}",
    "TEL 090-1234-5678 {}",
    "{}\n次の行",
]


def test_published_example_is_valid() -> None:
    assert is_individual_number("123456789018")
    for last in "012345679":
        assert not is_individual_number("12345678901" + last)


def test_check_digit_for_every_remainder() -> None:
    # Remainders 0 and 1 give check digit 0; remainder r >= 2 gives 11 - r.
    by_remainder: dict[int, str] = {}
    n = 0
    while len(by_remainder) < 11:
        prefix = f"{n:011d}"
        remainder = sum(int(d) * w for d, w in zip(prefix, WEIGHTS, strict=True)) % 11
        by_remainder.setdefault(remainder, prefix)
        n += 1
    for remainder, prefix in by_remainder.items():
        expected = 0 if remainder <= 1 else 11 - remainder
        assert is_individual_number(prefix + str(expected))
        assert not is_individual_number(prefix + str((expected + 1) % 10))


@pytest.mark.parametrize("text", ["", "12345678901", "1234567890123", "12345678901８", "abc"])
def test_is_individual_number_needs_twelve_ascii_digits(text: str) -> None:
    assert not is_individual_number(text)


def reference_scan(groups: list[str]) -> bool:
    # Every run of consecutive whole groups with 12 digits, checked with this file's digit.
    return any(
        len(candidate) == 12 and candidate[-1] == str(check_digit(candidate[:11]))
        for i in range(len(groups))
        for j in range(i + 1, len(groups) + 1)
        for candidate in ["".join(groups[i:j])]
    )


@given(
    groups=st.lists(st.text(alphabet="0123456789", min_size=1, max_size=13), max_size=12),
    separators=st.lists(st.sampled_from([" ", "-", " - ", "ー", "－", "　"]), min_size=12),
)
def test_scan_agrees_with_a_brute_force_reference(groups: list[str], separators: list[str]) -> None:
    text = "".join(g + sep for g, sep in zip(groups, separators, strict=False)).rstrip(" -ー－　")
    assert contains_individual_number(text) == reference_scan(groups)


@given(number=valid_numbers, data=st.data())
def test_every_valid_number_is_found_in_every_written_form(
    number: str, data: st.DataObject
) -> None:
    assert is_individual_number(number)
    form = data.draw(st.sampled_from(written_forms(number)))
    context = data.draw(st.sampled_from(CONTEXTS))
    text = context.format(form)
    assert contains_individual_number(text)
    with pytest.raises(ValueError) as caught:
        reject_individual_number(text)
    assert number not in str(caught.value)
    assert number[:4] not in str(caught.value)


@given(number=invalid_numbers, data=st.data())
def test_wrong_check_digits_are_not_reported(number: str, data: st.DataObject) -> None:
    assert not is_individual_number(number)
    form = data.draw(st.sampled_from(written_forms(number)))
    text = data.draw(st.sampled_from(["{}", "番号: {}。", "メモ {} です"])).format(form)
    assert not contains_individual_number(text)
    assert reject_individual_number(text) == text


@given(number=valid_numbers, extra=st.text(alphabet="0123456789", min_size=1, max_size=4))
def test_longer_unbroken_runs_are_other_identifiers(number: str, extra: str) -> None:
    # IMEI, card and account numbers: a 12-digit slice of a longer group is not a candidate.
    assert not contains_individual_number(extra + number)
    assert not contains_individual_number(number + extra)


@given(number=valid_numbers)
def test_digits_split_otherwise_are_not_joined(number: str) -> None:
    a, b = number[:6], number[6:]
    for text in (f"{a}/{b}", f"{a}  {b}", f"{a}--{b}", f"{a}\n{b}", f"{a}.{b}", f"{a},{b}"):
        assert not contains_individual_number(text)


def test_everyday_numbers_pass() -> None:
    for text in (
        "東京都千代田区千代田1-2-3 メゾン101号室",
        "TEL 090-1234-5678 / 03-1234-5678",
        "IMEI 490154203237518",
        "2024-01-15 来店、画面割れ",
        "",
    ):
        assert not contains_individual_number(text)
        assert reject_individual_number(text) == text


@given(text=st.text())
def test_scan_accepts_any_text(text: str) -> None:
    found = contains_individual_number(text)
    if not found:
        assert reject_individual_number(text) == text


# --- identity documents ------------------------------------------------------------------------


@given(number=valid_numbers)
def test_licence_numbers_passing_the_my_number_check_are_kept(number: str) -> None:
    assert is_individual_number(number)
    assert normalise_document_number(DocumentType.DRIVERS_LICENSE, number) == number
    spaced = f"{number[:4]} {number[4:8]} {number[8:]}".translate(FULL_WIDTH)
    assert normalise_document_number(DocumentType.DRIVERS_LICENSE, spaced) == number


def test_a_known_licence_number_with_a_valid_my_number_check_digit() -> None:
    assert is_individual_number("123456789018")
    assert normalise_document_number(DocumentType.DRIVERS_LICENSE, "1234-5678-9018") == (
        "123456789018"
    )


@pytest.mark.parametrize(
    ("doc_type", "given_number", "kept"),
    [
        (DocumentType.DRIVERS_LICENSE, "123456789012", "123456789012"),
        (DocumentType.DRIVERS_LICENSE, "１２３４ ５６７８ ９０１２", "123456789012"),
        (DocumentType.PASSPORT, "tk1234567", "TK1234567"),
        (DocumentType.PASSPORT, "ＴＫ１２３４５６７", "TK1234567"),
        (DocumentType.RESIDENCE_CARD, "ab12345678cd", "AB12345678CD"),
        (DocumentType.RESIDENCE_CARD, "AB 1234 5678 CD", "AB12345678CD"),
        (DocumentType.RESIDENCE_CARD, "AB-12345678-CD", "AB12345678CD"),
    ],
)
def test_document_numbers_are_normalised(
    doc_type: DocumentType, given_number: str, kept: str
) -> None:
    assert normalise_document_number(doc_type, given_number) == kept


@pytest.mark.parametrize(
    ("doc_type", "given_number"),
    [
        (DocumentType.DRIVERS_LICENSE, "12345678901"),
        (DocumentType.DRIVERS_LICENSE, "1234567890123"),
        (DocumentType.DRIVERS_LICENSE, "12345678901A"),
        (DocumentType.PASSPORT, "T12345678"),
        (DocumentType.PASSPORT, "TK123456"),
        (DocumentType.PASSPORT, "TKX234567"),
        (DocumentType.PASSPORT, "ıK1234567"),  # dotless i upper-cases to I
        (DocumentType.RESIDENCE_CARD, "AB12345678C"),
        (DocumentType.RESIDENCE_CARD, "AB1234567CD"),
        (DocumentType.RESIDENCE_CARD, "1234567890CD"),
        (DocumentType.DRIVERS_LICENSE, None),
        (DocumentType.PASSPORT, ""),
        (DocumentType.RESIDENCE_CARD, "  "),
    ],
)
def test_malformed_document_numbers_are_refused(
    doc_type: DocumentType, given_number: str | None
) -> None:
    with pytest.raises(ValueError) as caught:
        normalise_document_number(doc_type, given_number)
    if given_number:
        assert given_number not in str(caught.value)


@pytest.mark.parametrize(
    "doc_type", [DocumentType.MY_NUMBER_CARD, DocumentType.HEALTH_INSURANCE_CARD]
)
def test_numberless_documents_keep_no_number(doc_type: DocumentType) -> None:
    assert normalise_document_number(doc_type, None) is None
    assert normalise_document_number(doc_type, "") is None
    for number in ("123456789018", "記号12 番号34", "x"):
        with pytest.raises(ValueError) as caught:
            normalise_document_number(doc_type, number)
        assert number not in str(caught.value)


def test_last4() -> None:
    assert last4("123456789012") == "9012"
    assert last4("TK1234567") == "4567"
    with pytest.raises(ValueError):
        last4("1234")


# --- phone numbers -----------------------------------------------------------------------------


@st.composite
def mobile_numbers(draw: st.DrawFn) -> tuple[str, str, str]:
    prefix = draw(st.sampled_from(["70", "80", "90"]))
    first = draw(st.text(alphabet="123456789", min_size=1, max_size=1))
    rest = draw(st.text(alphabet="0123456789", min_size=7, max_size=7))
    subscriber = first + rest
    return prefix, subscriber[:4], subscriber[4:]


@given(parts=mobile_numbers(), data=st.data())
def test_phone_forms_all_normalise_to_one_e164(
    parts: tuple[str, str, str], data: st.DataObject
) -> None:
    p, a, b = parts
    forms = [
        f"0{p}-{a}-{b}",
        f"0{p}{a}{b}",
        f"+81 {p} {a} {b}",
        f"+81-{p}-{a}-{b}",
        f"+81{p}{a}{b}",
        f" 0{p} {a} {b} ",
        f"(0{p}) {a}-{b}",
        f"0{p}ー{a}ー{b}",
    ]
    forms += [form.translate(FULL_WIDTH) for form in forms]
    form = data.draw(st.sampled_from(forms))
    e164 = normalise_phone(form)
    assert e164 == f"+81{p}{a}{b}"
    assert format_national(e164) == f"0{p}-{a}-{b}"
    assert normalise_phone(format_national(e164)) == e164


@pytest.mark.parametrize(
    ("text", "e164", "national"),
    [
        ("090-1234-5678", "+819012345678", "090-1234-5678"),
        ("09012345678", "+819012345678", "090-1234-5678"),
        ("+81 90 1234 5678", "+819012345678", "090-1234-5678"),
        ("０９０－１２３４－５６７８", "+819012345678", "090-1234-5678"),
        ("(03) 1234-5678", "+81312345678", "03-1234-5678"),
        ("０３（１２３４）５６７８", "+81312345678", "03-1234-5678"),
        ("06-6123-4567", "+81661234567", "06-6123-4567"),
        ("0120-123-456", "+81120123456", "0120-123-456"),
        ("050-1234-5678", "+815012345678", "050-1234-5678"),
    ],
)
def test_phone_examples(text: str, e164: str, national: str) -> None:
    assert normalise_phone(text) == e164
    assert format_national(e164) == national


@pytest.mark.parametrize(
    "text",
    [
        "",
        "12345",
        "090-1234-567",
        "090-1234-56789",
        "+1 650 253 0000",  # valid, but not Japanese
        "+44 20 7946 0958",
        "0120-ABC-DEF",
        "03-1234-5678 ext. 12",
        "tel:+81-90-1234-5678",
        "0" * 40,
        "090-1234-5678 / 03",
    ],
)
def test_bad_phone_numbers_are_refused(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        normalise_phone(text)
    assert caught.value.__cause__ is None
    if text.strip():
        assert text.strip() not in str(caught.value)


def test_format_national_needs_e164() -> None:
    with pytest.raises(ValueError):
        format_national("09012345678")
    with pytest.raises(ValueError):
        format_national("+81")


# --- katakana ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("ヤマダ タロウ", "ヤマダ タロウ"),
        ("ヤマダ　タロウ", "ヤマダ タロウ"),
        ("  ヤマダ   タロウ ", "ヤマダ タロウ"),
        ("ﾔﾏﾀﾞ ﾀﾛｳ", "ヤマダ タロウ"),
        ("ｻﾄｳ ｼﾞｭﾝｲﾁﾛｰ", "サトウ ジュンイチロー"),
        ("スミス・ジョン", "スミス・ジョン"),
        ("ヴァン", "ヴァン"),
    ],
)
def test_kana_is_normalised(text: str, normal: str) -> None:
    assert normalise_kana(text) == normal


@pytest.mark.parametrize(
    "text",
    ["", "   ", "やまだ たろう", "Yamada Taro", "ヤマダ1", "山田", "ヤマダ\tタロウ", "ヤ" * 101],
)
def test_non_kana_is_refused(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        normalise_kana(text)
    if text.strip():
        assert text.strip() not in str(caught.value)


katakana = st.text(
    alphabet=st.characters(min_codepoint=0x30A1, max_codepoint=0x30FA), min_size=1, max_size=10
)
HALF_WIDTH = "ｦｧｨｩｪｫｬｭｮｯｰｱｲｳｴｵｶｷｸｹｺｻｼｽｾｿﾀﾁﾂﾃﾄﾅﾆﾇﾈﾉﾊﾋﾌﾍﾎﾏﾐﾑﾒﾓﾔﾕﾖﾗﾘﾙﾚﾛﾜﾝﾞﾟ"


@given(words=st.lists(katakana, min_size=1, max_size=3), sep=st.sampled_from([" ", "　", "  "]))
def test_kana_round_trips(words: list[str], sep: str) -> None:
    text = sep.join(words)
    normal = normalise_kana(text)
    assert normalise_kana(normal) == normal
    assert kana_index_form(normal) == unicodedata.normalize("NFKC", "".join(words))
    assert " " not in kana_index_form(normal)


@given(text=st.text(alphabet=HALF_WIDTH[:-2], min_size=1, max_size=20))
def test_half_width_kana_becomes_full_width(text: str) -> None:
    normal = normalise_kana(text)
    assert normal == unicodedata.normalize("NFKC", text)
    assert all(0x30A0 <= ord(char) <= 0x30FF for char in normal)


def test_kana_index_form_ignores_spacing() -> None:
    assert kana_index_form(normalise_kana("ヤマダ タロウ")) == kana_index_form(
        normalise_kana("ﾔﾏﾀﾞﾀﾛｳ")
    )


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normal", "shown"),
    [
        ("山田 太郎", "山田 太郎", "山田 **"),
        ("山田　太郎", "山田 太郎", "山田 **"),
        ("  山田 　 太郎  ", "山田 太郎", "山田 **"),
        ("山田", "山田", "山 **"),
        ("Smith John Paul", "Smith John Paul", "Smith **"),
        ("ＳＭＩＴＨ　ＪＯＨＮ", "ＳＭＩＴＨ ＪＯＨＮ", "ＳＭＩＴＨ **"),  # characters kept
        ("髙橋 一郎", "髙橋 一郎", "髙橋 **"),
    ],
)
def test_names_are_normalised_and_masked(text: str, normal: str, shown: str) -> None:
    assert normalise_name(text) == normal
    assert display_name(normal) == shown
    assert display_name(text) == shown


def test_names_are_nfc() -> None:
    decomposed = "Jose\u0301 Garci\u0301a"
    assert normalise_name(decomposed) == "José García"
    assert display_name("e\u0301mile") == "e\u0301 **"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "　",
        "山田\n太郎",
        "山田\t太郎",
        "山田\x00",
        "山田\u202e太郎",
        "山\u200b田",
        "あ" * 101,
    ],
)
def test_bad_names_are_refused(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        normalise_name(text)
    if text.strip():
        assert text not in str(caught.value)


name_parts = st.text(
    alphabet=st.characters(categories=("L", "M", "N", "P", "S")),
    min_size=1,
    max_size=20,
)


@given(family=name_parts, given_name=name_parts, sep=st.sampled_from([" ", "　", " 　 "]))
def test_display_name_shows_only_the_family_name(family: str, given_name: str, sep: str) -> None:
    normal = normalise_name(family + sep + given_name)
    assert normal == unicodedata.normalize("NFC", family) + " " + unicodedata.normalize(
        "NFC", given_name
    )
    assert display_name(normal) == unicodedata.normalize("NFC", family) + " **"
    assert normalise_name(normal) == normal


@given(name=name_parts)
def test_display_name_without_a_space_shows_one_character(name: str) -> None:
    normal = normalise_name(name)
    shown = display_name(normal)
    assert shown.endswith(" **")
    first = shown[: -len(" **")]
    assert first and normal.startswith(first)
    assert all(unicodedata.combining(char) for char in first[1:])


def test_display_name_refuses_empty() -> None:
    with pytest.raises(ValueError):
        display_name(" ")


# --- postal codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["100-0001", "1000001", "１００－０００１", "１０００００１", "〒100-0001", " 100ー0001 "],
)
def test_postal_codes_are_normalised(text: str) -> None:
    assert normalise_postal_code(text) == "100-0001"


@given(digits=st.text(alphabet="0123456789", min_size=7, max_size=7))
def test_postal_code_forms_agree(digits: str) -> None:
    expected = f"{digits[:3]}-{digits[3:]}"
    assert normalise_postal_code(digits) == expected
    assert normalise_postal_code(expected.translate(FULL_WIDTH)) == expected


@pytest.mark.parametrize(
    "text",
    ["", "100-001", "10-00001", "100--0001", "100 0001", "abc-defg", "100-00011", "1000-001"],
)
def test_bad_postal_codes_are_refused(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        normalise_postal_code(text)
    if text:
        assert text not in str(caught.value)


# --- email -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address", "index"),
    [
        ("taro@example.jp", "taro@example.jp", "taro@example.jp"),
        ("Taro.Yamada@Example.CO.JP", "Taro.Yamada@example.co.jp", "Taro.Yamada@example.co.jp"),
        ("taro+shop@EXAMPLE.com", "taro+shop@example.com", "taro+shop@example.com"),
    ],
)
def test_emails_are_normalised(text: str, address: str, index: str) -> None:
    assert normalise_email(text) == (address, index)


def test_email_index_keeps_local_part_case() -> None:
    assert normalise_email("Taro@example.jp")[1] != normalise_email("taro@example.jp")[1]
    assert normalise_email("taro@EXAMPLE.JP")[1] == normalise_email("taro@example.jp")[1]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "taro",
        "taro@",
        "@example.jp",
        "taro@@example.jp",
        "taro@example",
        "taro@host.test",
        "taro example@example.jp",
        "a" * 65 + "@example.jp",
    ],
)
def test_bad_emails_are_refused(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        normalise_email(text)
    assert caught.value.__cause__ is None
    for part in text.split("@"):
        if part:
            assert part not in str(caught.value)
