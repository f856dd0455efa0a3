"""Causal methods on one engine: interventions at head sites."""

from headmine.causal.engine import intervening as intervening
from headmine.causal.engine import run_with_interventions as run_with_interventions
from headmine.causal.interventions import Gate as Gate
from headmine.causal.interventions import Intervention as Intervention
from headmine.causal.interventions import Mean as Mean
from headmine.causal.interventions import PatchFrom as PatchFrom
from headmine.causal.interventions import Scale as Scale
from headmine.causal.interventions import Steer as Steer
from headmine.causal.interventions import Zero as Zero
