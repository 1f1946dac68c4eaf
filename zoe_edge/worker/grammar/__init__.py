"""JSON schema -> llama.cpp GBNF grammar, with the checks a grammar alone cannot give.

Pure functions, usable without a model. The pipeline:

* :func:`lower_schema` (:mod:`.lowering`, with :mod:`.algebra`) rewrites any JSON Schema (draft
  2020-12, plus the common draft-7 spellings) into a small *core* schema the grammar can enforce
  exactly; what the core cannot say degrades, and each degradation is named with its path. Only
  something that is not a JSON Schema at all raises :class:`InvalidSchema` (:mod:`.errors`).
* :class:`Converter` (:mod:`.gbnf`) turns core schemas into GBNF. It keeps llama-cpp-python's rule
  names and primitives, adds integer/number ranges (:mod:`.ranges`; ``minimum`` and friends, which
  Home Assistant's tool schemas use), translates patterns itself (:mod:`.patterns`), and fixes
  what upstream gets wrong (see the notes on each method).
* :func:`compile_schema` (:mod:`.compiler`) is both in one call, logging each degraded feature once.
* :func:`validate` (:mod:`.validation`) checks a value against the ORIGINAL schema, including what
  the grammar did not enforce: the last line of defence for output from a degraded grammar or
  from free text.
"""

from __future__ import annotations

from zoe_edge.worker.grammar.compiler import (
    CompiledSchema,
    compile_schema,
    note_degraded,
    schema_grammar,
    unsupported_features,
)
from zoe_edge.worker.grammar.errors import Core, InvalidSchema, UnsupportedSchema
from zoe_edge.worker.grammar.gbnf import Converter
from zoe_edge.worker.grammar.lowering import Lowered, lower_schema
from zoe_edge.worker.grammar.patterns import regex_rule
from zoe_edge.worker.grammar.ranges import integer_bounds, integer_range_rule, number_range_rule
from zoe_edge.worker.grammar.schema import INVALID_RULE_CHARS, modernise
from zoe_edge.worker.grammar.validation import validate

__all__ = [
    "INVALID_RULE_CHARS",
    "CompiledSchema",
    "Converter",
    "Core",
    "InvalidSchema",
    "Lowered",
    "UnsupportedSchema",
    "compile_schema",
    "integer_bounds",
    "integer_range_rule",
    "lower_schema",
    "modernise",
    "note_degraded",
    "number_range_rule",
    "regex_rule",
    "schema_grammar",
    "unsupported_features",
    "validate",
]
