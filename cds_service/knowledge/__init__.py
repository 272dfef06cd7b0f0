"""Policy knowledge: the FHIR artifacts in fhir_profiles/, loaded and indexed once."""

from cds_service.knowledge.loader import DEFAULT_DIR, KnowledgeError, load_knowledge
from cds_service.knowledge.model import Knowledge

__all__ = ["DEFAULT_DIR", "Knowledge", "KnowledgeError", "load_knowledge"]
