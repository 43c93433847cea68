"""Knowledge workflows: documents in partitions with metadata, questions restricted by it."""

from megacontext.apps.knowledge.ask import KnowledgeAnswer, KnowledgeCitation, ask_where
from megacontext.apps.knowledge.documents import (
    KnowledgeSource,
    add_document,
    knowledge_sources,
    select_sources,
)
from megacontext.apps.knowledge.predicates import FIELDS, Predicate, parse_predicate
from megacontext.apps.knowledge.prior import PartitionPrior, parse_partition_prior

__all__ = [
    "FIELDS",
    "KnowledgeAnswer",
    "KnowledgeCitation",
    "KnowledgeSource",
    "PartitionPrior",
    "Predicate",
    "add_document",
    "ask_where",
    "knowledge_sources",
    "parse_partition_prior",
    "parse_predicate",
    "select_sources",
]
