"""Is this order a liquid biopsy the policy judges? Codes first, then names, then words.

1. A procedure code on the policy's list (ever) or of a catalogue test, in a coding under any URI
   the NamingSystems give for CPT/HCPCS (or with no system), or written in the order's text.
   A catalogue test that is not a ctDNA/CTC cancer test (prenatal, transplant, infection, other
   analytes) is recognised as *not* this policy's.
2. A catalogue test's name or alias in the order's own name for the test (code.text, coding displays),
   then in the rest of its text (orderDetail): the longest match wins, a laboratory's product before a
   kind of test ("CellSearch circulating tumor cell count" is CellSearch).
3. Words: a recognition keyword (ctDNA, circulating tumor cells, liquid biopsy, ...) is enough;
   an ambiguous one (cell-free DNA, cfDNA, MRD, CTC) counts only with cancer context (a cancer
   word, a neoplasm diagnosis or a liquid-biopsy purpose) and never beside a non-cancer keyword
   (prenatal, transplant, infection, bone marrow, a swab) or, when the order states no purpose and has
   no cancer word, beside a pregnancy or solid-organ transplant diagnosis.
"""

from __future__ import annotations

import re

from cds_service import terminology
from cds_service.decision.model import Order, Recognised, Recognition
from cds_service.knowledge.lexicon import normalise
from cds_service.knowledge.model import CatalogueTest, Knowledge

# CPT (5 digits), PLA (4 digits + U), Category III (4 digits + T), HCPCS Level II (letter + 4 digits)
_CODE_IN_TEXT = re.compile(r"(?<![A-Za-z0-9])(\d{4}[UuTt]|\d{5}|[A-Va-v]\d{4})(?![A-Za-z0-9])")
# A CPT/HCPCS code with a two-character modifier appended (0001U-90, 81479 59)
_WITH_MODIFIER = re.compile(r"^(\d{4}[UT]|\d{5}|[A-V]\d{4})[- ][A-Z0-9]{2}$")


def recognise(order: Order, knowledge: Knowledge) -> Recognition:
    by_code = _by_code(order, knowledge)
    if by_code is not None:
        return by_code
    text = normalise(order.text)
    lexicon = knowledge.lexicon
    # the order's own name for the test before a test its details mention
    for where in dict.fromkeys((normalise(order.name), text)):
        if (name := lexicon.test_names.find(where) or lexicon.test_kind_names.find(where)) is not None:
            test = lexicon.test_by_name[name]
            return _of_test(test, _billing_code(test, knowledge), "name", name)
    if (word := lexicon.recognition.find(text)) is not None:
        return Recognition(Recognised.LIQUID_BIOPSY, via="keyword", evidence=word)
    ambiguous = lexicon.ambiguous.find(text)
    if ambiguous is None:
        return Recognition(Recognised.NONE)
    if (marker := lexicon.non_cancer.find(text)) is not None:
        return Recognition(Recognised.NOT_THIS_POLICY, via="keyword", evidence=marker)
    cancer_words = lexicon.cancer_context.find(text) is not None
    if not (cancer_words or order.purposes) and (pregnancy_or_graft := _non_cancer_diagnosis(order)) is not None:
        return Recognition(Recognised.NOT_THIS_POLICY, via="diagnosis", evidence=pregnancy_or_graft)
    if _cancer_context(order, text, knowledge):
        return Recognition(Recognised.LIQUID_BIOPSY, via="keyword", evidence=ambiguous)
    return Recognition(Recognised.NONE)


def procedure_codes(order: Order, knowledge: Knowledge) -> list[tuple[str, str]]:
    """(code, via) of every procedure code the order carries: codings first, then its text."""
    found: list[tuple[str, str]] = []
    for system, code, _display in order.codings:
        code = _WITH_MODIFIER.sub(r"\1", code)  # a code billed with a modifier is the code
        if system in knowledge.procedure_systems or (not system and _CODE_IN_TEXT.fullmatch(code)):
            found.append((code, "code"))
    for match in _CODE_IN_TEXT.finditer(order.text):
        code = match.group(1).upper()
        if code in knowledge.listed or (knowledge.code_system_cpt, code) in knowledge.tests_by_code:
            found.append((code, "code-in-text"))  # a bare number in text counts only when we know it
    return list(dict.fromkeys(found))


def _by_code(order: Order, knowledge: Knowledge) -> Recognition | None:
    codes = procedure_codes(order, knowledge)
    for code, via in codes:  # a code ever on the policy's list is the policy's subject by definition
        if code in knowledge.listed:
            test = knowledge.tests_by_code.get((knowledge.code_system_cpt, code))
            return Recognition(Recognised.LIQUID_BIOPSY, code, test, via, code)
    for code, via in codes:
        test = knowledge.tests_by_code.get((knowledge.code_system_cpt, code))
        if test is None and code in knowledge.judged_codes:
            return Recognition(Recognised.LIQUID_BIOPSY, code, None, via, code)
        if test is not None:
            return _of_test(test, code, via, code)
    for system, code, _display in order.codings:  # other code systems the catalogue knows (LOINC)
        test = knowledge.tests_by_code.get((system, code))
        if test is not None:
            return _of_test(test, "", "code", code)
    return None


def _billing_code(test: CatalogueTest, knowledge: Knowledge) -> str:
    """The code a test named without one will be billed under (CRD resp-51: infer what is not sent):
    its code on the policy's list, else its only CPT/PLA code, else none."""
    cpt = [code for system, code in test.codes if system == knowledge.code_system_cpt]
    listed = [code for code in cpt if code in knowledge.listed]
    return listed[0] if len(listed) == 1 else cpt[0] if len(cpt) == 1 else ""


def _of_test(test: CatalogueTest, code: str, via: str, evidence: str) -> Recognition:
    kind = Recognised.LIQUID_BIOPSY if test.is_liquid_biopsy else Recognised.NOT_THIS_POLICY
    return Recognition(kind, code, test, via, evidence)


def _non_cancer_diagnosis(order: Order) -> str | None:
    return next((d.code for d in order.diagnoses if d.code.upper().replace(".", "").startswith(
        terminology.NON_CANCER_CFDNA_CODE_PREFIXES)), None)


def _cancer_context(order: Order, text: str, knowledge: Knowledge) -> bool:
    return (knowledge.lexicon.cancer_context.find(text) is not None or bool(order.purposes)
            or any(d.category.startswith(terminology.NEOPLASM_CATEGORY_PREFIXES) for d in order.diagnoses))
