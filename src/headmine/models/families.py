"""Imports every built-in adapter so each registers itself by ``config.model_type``."""

from headmine.models import bert, gemma, gpt2, gpt_neox, llama, opt  # noqa: F401
