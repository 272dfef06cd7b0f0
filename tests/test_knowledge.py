"""The knowledge artifacts: the policy's facts checked against a table written by hand from the
policy text, and the promise that changing the policy is a change of data, not of code."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from cds_service import create_app
from cds_service.knowledge import DEFAULT_DIR, Knowledge, KnowledgeError, load_knowledge
from cds_service.knowledge.check import check_artifacts
from tests.conftest import hook_request, service_request, start_server

# From MP 2.267 (shared/policy), section IX Policy History and section VII Coding Information.
# code: (first day on the list or None when listed before the recorded history, first day off or None)
POLICY_CODES = {
    "0091U": (None, None),
    "0337U": (date(2022, 10, 1), None),
    "0338U": (date(2022, 10, 1), None),
    "0368U": (date(2023, 4, 1), None),
    "0453U": (date(2024, 7, 1), None),
    "0491U": (date(2024, 10, 1), None),
    "0492U": (date(2024, 10, 1), None),
    "0530U": (date(2025, 1, 1), None),
    "81277": (None, date(2023, 10, 6)),
    "86152": (None, date(2025, 8, 5)),
    "86153": (None, date(2025, 8, 5)),
}
# Section I, Cross-References.
CROSS_REFERENCES = {
    "2.235": "Assays of Genetic Expression in Tumor Tissue as a Technique to Determine Prognosis in Patients "
             "with Breast Cancer",
    "2.241": "Molecular Analysis (Including Liquid Biopsy) for Targeted Therapy or Immunotherapy of Non-Small "
             "Cell Lung Cancer",
    "2.259": "Molecular Panel Testing of Cancers to Identify Targeted Therapies",
    "2.277": "Investigational Miscellaneous Genetic and Molecular Diagnostic Tests",
    "2.280": "Gene Expression Profiling and Protein Biomarkers for the Management, Diagnosis, and Cancer Risk "
             "Assessment of Prostate Cancer",
    "2.315": "Gene Expression Profile Testing and Circulating Tumor DNA testing for Predicting Recurrence in "
             "Colon Cancer",
    "2.316": "Somatic Biomarker Testing (Including Liquid Biopsy) for Targeted Treatment of Metastatic Colorectal "
             "Cancer (KRAS, NRAS, BRAF, NTRK, and HER2)",
    "2.364": "Somatic Genetic Testing to Select Individuals with Melanoma or Glioma for Targeted Therapy or "
             "Immunotherapy",
}
FEP_MANUAL = ("https://www.fepblue.org/benefit-plans/medical-policies-and-utilization-management-guidelines/"
              "medical-policies")


def test_code_history_matches_the_policy_text(knowledge: Knowledge) -> None:
    assert set(knowledge.listed) == set(POLICY_CODES)
    for code, (joined, removed) in POLICY_CODES.items():
        [stay] = knowledge.listed[code].memberships
        assert (stay.joined, stay.removed) == (joined, removed), code
        assert stay.source, f"{code} needs its policy-history source"


def test_list_on_the_last_day_matches_section_vii(knowledge: Knowledge) -> None:
    assert knowledge.listed_on(date(2026, 6, 30)) == {"0091U", "0337U", "0338U", "0368U", "0453U", "0491U",
                                                       "0492U", "0530U"}


def test_policy_identity_retirement_and_delegation(knowledge: Knowledge) -> None:
    assert knowledge.policy_label == "MP 2.267"
    assert knowledge.policy_title == ("Circulating Tumor DNA and Circulating Tumor Cells for Cancer Management "
                                      "(Liquid Biopsy)")
    assert knowledge.publisher == "Capital Blue Cross"
    assert knowledge.retirement == date(2026, 7, 1)
    assert knowledge.successor.label == "EviCore"
    assert knowledge.variations[0].manual.url == FEP_MANUAL
    plan = json.loads((DEFAULT_DIR / "PlanDefinition-mp-2-267.json").read_text())
    assert plan["status"] == "retired"
    assert {t["name"] for a in plan["action"] for t in a["trigger"]} == {"order-select", "order-sign",
                                                                          "order-dispatch"}


# The policy's footer: "Health care benefit programs issued or administered by Capital Blue Cross and/or its
# subsidiaries, Capital Advantage Insurance Company, Capital Advantage Assurance Company and Keystone Health
# Plan Central."
FOOTER_COMPANIES = {"Capital Blue Cross", "Capital Advantage Insurance Company", "Capital Advantage Assurance Company",
                    "Keystone Health Plan Central"}


def test_served_payers_are_the_companies_the_footer_names(knowledge: Knowledge) -> None:
    assert {p.name for p in knowledge.payers} == FOOTER_COMPANIES
    assert knowledge.payers[0].name == "Capital Blue Cross"  # the parent: deployment settings extend it


def test_fep_goes_by_its_names(knowledge: Knowledge) -> None:
    names = set(knowledge.variations[0].names)
    assert {"FEP", "Federal Employee Program", "Service Benefit Plan", "FEP Blue Standard", "FEP Blue Basic",
            "FEP Blue Focus"} <= names
    assert {"104", "105", "106", "111", "112", "113", "131", "132", "133"} <= knowledge.variations[0].plan_identifiers


def test_code_systems_under_every_identifier_ehrs_use(knowledge: Knowledge) -> None:
    cpt = "http://www.ama-assn.org/go/cpt"
    assert knowledge.canonical_system("urn:oid:2.16.840.1.113883.6.12") == cpt
    assert knowledge.canonical_system("https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets") == \
        knowledge.canonical_system("urn:oid:2.16.840.1.113883.6.285")
    assert knowledge.canonical_system("urn:oid:2.16.840.1.113883.6.90") == knowledge.icd10_system


def test_catalogue_cites_a_source_for_every_test(knowledge: Knowledge) -> None:
    catalogue = json.loads((DEFAULT_DIR / "CodeSystem-liquid-biopsy-test-catalogue.json").read_text())
    for concept in catalogue["concept"]:
        sources = [p["valueString"] for p in concept["property"] if p["code"] == "source"]
        assert sources and all(s.startswith(("https://", "http://")) for s in sources), concept["code"]
    kinds = {t.analyte for t in knowledge.catalogue}
    assert {"ctdna", "ctc", "non-tumor-cfdna"} <= kinds
    assert {t.non_cancer_use for t in knowledge.catalogue if not t.cancer} >= {"prenatal", "transplant-rejection",
                                                                               "infection"}


def test_verdict_reasons_carry_crd_values(knowledge: Knowledge) -> None:
    assert knowledge.reasons["investigational-code-list"].covered == "not-covered"
    assert knowledge.reasons["policy-retired-delegated"].covered == "conditional"
    assert knowledge.reasons["policy-retired-delegated"].info_needed == ("OTH",)
    assert knowledge.reasons["technical"].coding.code == "technical"
    assert knowledge.reasons["technical"].coding.system == "http://hl7.org/fhir/us/davinci-crd/CodeSystem/temp"


def test_cross_references_match_the_policy_text(knowledge: Knowledge) -> None:
    assert {n: p.title for n, p in knowledge.policies.items()} == CROSS_REFERENCES
    assert all(p.label == f"MP {n}" for n, p in knowledge.policies.items())


def test_issue_routing_table(knowledge: Knowledge) -> None:
    def policy(category: str) -> set[str | None]:
        return {r.policy for r in knowledge.routes_by_category[category]}
    assert policy("C34") == {"2.241"}
    assert policy("C43") == policy("C71") == {"2.364"}
    assert policy("C61") == {"2.280"}
    for primary in ("C18", "C19", "C20"):
        assert {frozenset(r.requires_categories) for r in knowledge.routes_by_category[primary]} == {
            frozenset({"C77"}), frozenset({"C78"}), frozenset({"C79"})}
    assert {r.policy for r in knowledge.routes_by_purpose["comprehensive-genomic-profiling"]} == {"2.259"}
    assert {r.policy for r in knowledge.routes_by_purpose["ctdna-relapse-prediction"]} == {"2.315"}


def test_artifacts_check_passes() -> None:
    assert check_artifacts() == []


# ---------------------------------------------------------------- changing the policy is a data change


@pytest.fixture
def artifact_copy(tmp_path: Path) -> Path:
    target = tmp_path / "fhir_profiles"
    shutil.copytree(DEFAULT_DIR, target)
    return target


def edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def add_code(code: str, joined: str) -> Any:
    def change(vs: dict[str, Any]) -> None:
        concept = {"extension": [{"url": "https://liquid-biopsy-cds.example.org/fhir/StructureDefinition/"
                                  "code-list-membership",
                                  "extension": [{"url": "joined", "valueDate": joined},
                                                {"url": "source", "valueString": "hypothetical update"}]}],
                   "code": code, "display": "Hypothetical test"}
        vs["compose"]["include"][0]["concept"].append(concept)
    return change


def test_new_code_with_future_date_is_honoured_without_code_change(artifact_copy: Path, tmp_path: Path) -> None:
    edit(artifact_copy / "ValueSet-mp-2-267-investigational-codes.json", add_code("0999U", "2026-02-01"))
    assert check_artifacts(artifact_copy) == []
    app = create_app({"KNOWLEDGE_DIR": str(artifact_copy), "DATABASE_URL": f"sqlite:///{tmp_path / 'k.db'}",
                      "TODAY": "2026-11-25"})
    server, thread, base = start_server(app)
    try:
        import requests

        def cards(dos: str) -> list[dict[str, Any]]:
            body = hook_request(service_request("0999U", dos))
            resp = requests.post(f"{base}/cds-services/liquid-biopsy-order-sign", json=body, timeout=5)
            assert resp.status_code == 200
            result: list[dict[str, Any]] = resp.json()["cards"]
            return result
        assert "depends on the reason for testing" in cards("2026-01-31")[0]["summary"]  # not yet listed
        assert "investigational and not covered" in cards("2026-02-01")[0]["summary"]
    finally:
        server.shutdown()
        thread.join(5)


@pytest.mark.parametrize(("file", "change", "message"), [
    ("ValueSet-mp-2-267-investigational-codes.json", add_code("0530U", "2025-06-01"), "listed twice"),
    ("PlanDefinition-mp-2-267.json", lambda d: d.pop("effectivePeriod"), "effectivePeriod"),
    ("PlanDefinition-mp-2-267.json", lambda d: d.update(date="yesterday"),
     "PlanDefinition-mp-2-267.json: invalid PlanDefinition"),
    ("PlanDefinition-mp-2-267.json", lambda d: d["action"][0].update(title=7),
     "invalid PlanDefinition: action[0].title"),  # located FHIRPath-style, as 400s for orders are
    ("ConceptMap-mp-2-267-exclusion-routing.json",
     lambda d: d["group"][0]["element"][0]["target"][0].update(code="9.999"), "9.999"),
    ("PlanDefinition-mp-2-267.json", lambda d: d["action"][3]["code"][0]["coding"][0].update(code="external-reference"),
     "'external-reference' is not a code of"),
    ("CodeSystem-liquid-biopsy-test-catalogue.json", lambda d: d["concept"].append(
        {"code": "new-test", "display": "New ctDNA test", "property": [
            {"code": "billing-code", "valueCoding": {"system": "http://www.ama-assn.org/go/cpt", "code": "0999U"}},
            {"code": "analyte", "valueCode": "ctdna"}, {"code": "cancer", "valueBoolean": True},
            {"code": "source", "valueString": "https://example.org"}]}), "0999U (New ctDNA test) is a liquid biopsy"),
    ("CodeSystem-liquid-biopsy-cds-codes.json", lambda d: d["concept"][1]["concept"][0]["property"][0].update(
        valueCode="maybe"), "must be CRD codes"),
    ("Organization-capital-blue-cross.json", lambda d: d.pop("name"), "needs a name"),
])
def test_broken_artifact_stops_start_up_naming_the_file(artifact_copy: Path, file: str, change: Any,
                                                         message: str) -> None:
    edit(artifact_copy / file, change)
    with pytest.raises(KnowledgeError) as err:
        load_knowledge(artifact_copy)
    assert message in str(err.value)
    assert check_artifacts(artifact_copy), "artifacts check must report the same problem"


def test_overlapping_history_is_rejected(artifact_copy: Path) -> None:
    def overlap(vs: dict[str, Any]) -> None:
        concept = next(c for c in vs["compose"]["include"][0]["concept"] if c["code"] == "81277")
        concept["extension"].append({"url": concept["extension"][0]["url"], "extension": [
            {"url": "joined", "valueDate": "2023-01-01"}, {"url": "source", "valueString": "bad"}]})
    edit(artifact_copy / "ValueSet-mp-2-267-investigational-codes.json", overlap)
    with pytest.raises(KnowledgeError, match="overlap"):
        load_knowledge(artifact_copy)


def test_example_that_breaks_the_profile_is_reported(artifact_copy: Path) -> None:
    def strip(sr: dict[str, Any]) -> None:
        sr.pop("occurrenceDateTime")
        sr["code"]["coding"][0]["code"] = "85025"
    edit(artifact_copy / "examples" / "ServiceRequest-example-0530U-2025.json", strip)
    problems = check_artifacts(artifact_copy)
    assert any("lb-1" in p for p in problems) and any("no code from" in p for p in problems)


def _validations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The resource types validated with fhir.resources from here on."""
    from cds_service.knowledge import loader

    seen: list[str] = []
    model_class = loader._model_class

    def counted(resource_type: str) -> Any:
        seen.append(resource_type)
        return model_class(resource_type)

    monkeypatch.setattr(loader, "_model_class", counted)
    return seen


def test_a_start_after_a_valid_one_does_not_validate_the_same_artifacts_again(
        artifact_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validating every artifact with fhir.resources was a third of a cold start; the same texts, found
    valid by the same library versions, are not validated again."""
    (artifact_copy / "knowledge-validated").unlink()  # the shipped digest: below
    validated = tmp_path / "instance" / "knowledge-validated"
    seen = _validations(monkeypatch)
    first = load_knowledge(artifact_copy, validated=validated)
    assert len(seen) == len(list(artifact_copy.glob("*.json"))) and validated.is_file()
    seen.clear()
    assert load_knowledge(artifact_copy, validated=validated) == first
    assert seen == []
    monkeypatch.setattr("fhir.resources.__version__", "99.0.0")  # another library version validates again
    load_knowledge(artifact_copy, validated=validated)
    assert seen


def test_the_shipped_artifacts_carry_the_digest_of_their_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh installation's first start skips validating them too (fhir_profiles/knowledge-validated)."""
    seen = _validations(monkeypatch)
    load_knowledge()
    assert seen == [], "fhir_profiles/knowledge-validated is stale: run python -m cds_service artifacts check --record"


def test_artifacts_check_records_the_digest_only_of_valid_artifacts(artifact_copy: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from cds_service.cli import main

    shipped = artifact_copy / "knowledge-validated"
    expected = shipped.read_text()
    shipped.unlink()
    assert main(["artifacts", "check", "--dir", str(artifact_copy)]) == 0 and not shipped.exists()
    assert main(["artifacts", "check", "--dir", str(artifact_copy), "--record"]) == 0
    assert shipped.read_text() == expected and "recorded their digest" in capsys.readouterr().out
    edit(artifact_copy / "PlanDefinition-mp-2-267.json", lambda d: d.update(date="yesterday"))
    assert main(["artifacts", "check", "--dir", str(artifact_copy), "--record"]) == 1
    assert shipped.read_text() == expected  # not the broken set's


def test_an_artifact_changed_after_a_valid_start_is_validated_again(
        artifact_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    validated = tmp_path / "knowledge-validated"
    load_knowledge(artifact_copy, validated=validated)
    edit(artifact_copy / "PlanDefinition-mp-2-267.json", lambda d: d.update(date="yesterday"))
    with pytest.raises(KnowledgeError, match=r"PlanDefinition-mp-2-267\.json: invalid PlanDefinition"):
        load_knowledge(artifact_copy, validated=validated)
    with pytest.raises(KnowledgeError, match="invalid PlanDefinition"):  # and not remembered as valid
        load_knowledge(artifact_copy, validated=validated)
    # the same with another canonical base: the texts validated are the ones after the substitution
    edit(artifact_copy / "PlanDefinition-mp-2-267.json", lambda d: d.update(date="2025-01-01"))
    load_knowledge(artifact_copy, validated=validated)
    seen = _validations(monkeypatch)
    load_knowledge(artifact_copy, "https://payer.example.com/fhir", validated=validated)
    assert seen


def test_knowledge_loads_where_its_validation_cannot_be_remembered(
        artifact_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (artifact_copy / "knowledge-validated").unlink()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    seen = _validations(monkeypatch)
    for _ in range(2):  # a folder that cannot be made: validated every time, and loaded
        assert load_knowledge(artifact_copy, validated=blocked / "knowledge-validated").policy_label
    assert len(seen) == 2 * len(list(artifact_copy.glob("*.json")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "fhir_profiles"]


def test_a_damaged_digest_file_means_validating_again(artifact_copy: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (artifact_copy / "knowledge-validated").write_bytes(b"\xff\xfe not a digest")
    validated = tmp_path / "knowledge-validated"
    validated.write_bytes(b"\xff\xfe not a digest")
    seen = _validations(monkeypatch)
    assert load_knowledge(artifact_copy, validated=validated).policy_label
    assert len(seen) == len(list(artifact_copy.glob("*.json")))
    assert len(validated.read_text().strip()) == 64  # replaced by the digest of what was validated


def test_the_service_remembers_its_valid_artifacts_in_its_instance_folder(tmp_path: Path) -> None:
    from cds_service.knowledge.loader import VALIDATED_KNOWLEDGE

    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'k.db'}"})
    assert len((Path(app.instance_path) / VALIDATED_KNOWLEDGE).read_text().strip()) == 64


def test_unparseable_file_is_named(artifact_copy: Path) -> None:
    (artifact_copy / "CodeSystem-medical-policies.json").write_text("{not json")
    with pytest.raises(KnowledgeError, match=r"CodeSystem-medical-policies\.json: is not valid JSON"):
        load_knowledge(artifact_copy)


def test_canonical_base_is_configurable(tmp_path: Path) -> None:
    k = load_knowledge(canonical_base="https://payer.example.com/fhir")
    assert k.purpose_system == "https://payer.example.com/fhir/CodeSystem/liquid-biopsy-purpose"
    assert k.override_reasons[0].system.startswith("https://payer.example.com/fhir/")
