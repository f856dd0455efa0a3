"""headmine: attention head mining for transformer language models."""

from headmine.core.errors import HeadmineError as HeadmineError
from headmine.core.ids import HeadId as HeadId
from headmine.core.ids import Site as Site

__version__ = "0.1.0"
