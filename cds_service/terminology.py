"""Identifiers of public terminologies and specifications (FHIR, CDS Hooks, CRD).

These are facts of the standards, not of the payer's policy; policy facts live in fhir_profiles/.
"""

CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = (
    "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
    "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
)
PROCEDURE_CODE_SYSTEMS = frozenset((CPT, *HCPCS))

CRD_COVERAGE_INFORMATION = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
CRD_COVERAGE_CODES = "http://hl7.org/fhir/us/davinci-crd/CodeSystem/coverage-information-codes"
CARD_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/cdshooks-card-type"

# FHIR Clinical Reasoning maps a PlanDefinition action's priority to a CDS Hooks card indicator.
INDICATOR_BY_PRIORITY = {"routine": "info", "urgent": "warning", "asap": "warning", "stat": "critical"}
