"""Identifiers and codes of public terminologies and specifications (FHIR, CDS Hooks, CRD, ICD-10-CM).

These are facts of the standards, not of the payer's policy; policy facts live in fhir_profiles/.
Which URIs and OIDs EHRs send CPT, HCPCS and ICD-10-CM under is data too (NamingSystem artifacts).
"""

HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"  # canonical (terminology.hl7.org)

CRD_VERSION = "2.2"  # davinci-crd.version: the first two parts of the IG version (2.2.1)
CRD_COVERAGE_INFORMATION = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
CRD_COVERAGE_DETAIL = "http://terminology.hl7.org/CodeSystem/crd-coverage-detail"  # CRDCoverageDetailCodesNew
CARD_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/cdshooks-card-type"
# Every code of CARD_TYPE_SYSTEM (THO 1.0.0, the 15 concepts of CRD's cardType ValueSet).
CARD_TYPES = frozenset({
    "coverage-info", "unsolicited-determ", "claim", "insurance", "limits", "network", "appropriate-use", "cost",
    "therapy-alternatives-opt", "therapy-alternatives-req", "clinical-reminder", "duplicate-therapy",
    "contraindication", "guideline", "off-guideline",
})

# ICD-10-CM categories of cancer: chapter 2's neoplasms that are or may be cancer, malignant (C00-C96), in
# situ (D00-D09), of uncertain or unspecified behaviour (D37-D49), and a personal history of cancer (Z85,
# the relapse-prediction population). Benign neoplasms (D10-D36, D3A: fibroids, nevi) are not.
NEOPLASM_CATEGORY_PREFIXES = ("C", "D0", "D37", "D38", "D39", "D4", "Z85")
# Diagnoses (ICD-10-CM codes without the dot) that make a cell-free DNA test a prenatal or donor-DNA one:
# pregnancy (O00-O9A), pregnant state, supervision of pregnancy, antenatal screening, weeks of gestation
# (Z33, Z34, Z36, Z3A), a transplanted solid organ (Z94.0-Z94.4) and its complications (T86.1-T86.4).
# Not bone marrow or stem cells (Z94.8, T86.0): those grafts treat the very cancers liquid biopsies follow.
NON_CANCER_CFDNA_CODE_PREFIXES = ("O", "Z33", "Z34", "Z36", "Z3A", "Z940", "Z941", "Z942", "Z943", "Z944",
                                  "T861", "T862", "T863", "T864")

# Coverage.class types (coverage-class CodeSystem) whose value names the plan itself, as an enrollment code does.
COVERAGE_CLASS_PLAN_TYPES = frozenset({"plan", "subplan"})

# FHIR Clinical Reasoning maps a PlanDefinition action's priority to a CDS Hooks card indicator.
INDICATOR_BY_PRIORITY = {"routine": "info", "urgent": "warning", "asap": "warning", "stat": "critical"}
