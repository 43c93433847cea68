"""Knowledge workflows: documents in partitions with metadata, questions restricted by it."""

from megacontext.apps.knowledge.ask import KnowledgeAnswer, KnowledgeCitation, ask_where
from megacontext.apps.knowledge.documents import (
    KnowledgeSource,
    add_document,
    knowledge_sources,
    select_sources,
)
from megacontext.apps.knowledge.predicates import FIELDS, Predicate, parse_predicate

__all__ = [
    "FIELDS",
    "KnowledgeAnswer",
    "KnowledgeCitation",
    "KnowledgeSource",
    "Predicate",
    "add_document",
    "ask_where",
    "knowledge_sources",
    "parse_predicate",
    "select_sources",
]
