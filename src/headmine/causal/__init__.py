"""Causal methods on one engine: interventions at head sites.

Importing the package imports every module in it, so each built-in method registers itself in
``headmine.causal.methods.METHODS`` (a new method is one new file).
"""

from headmine.causal.engine import intervening as intervening
from headmine.causal.engine import run_with_interventions as run_with_interventions
from headmine.causal.interventions import Gate as Gate
from headmine.causal.interventions import Intervention as Intervention
from headmine.causal.interventions import Mean as Mean
from headmine.causal.interventions import PatchFrom as PatchFrom
from headmine.causal.interventions import Scale as Scale
from headmine.causal.interventions import Steer as Steer
from headmine.causal.interventions import Zero as Zero
from headmine.core.plugins import import_submodules

BUILTIN_MODULES = import_submodules("headmine.causal")
