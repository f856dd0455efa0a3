"""Causal methods on one engine: interventions at head sites.

Importing the package registers the built-in methods in ``headmine.causal.methods.METHODS``.
"""

from headmine.causal import ablation as ablation
from headmine.causal import activation_patching as activation_patching
from headmine.causal import attribution_patching as attribution_patching
from headmine.causal import direct_logit_attribution as direct_logit_attribution
from headmine.causal import logit_lens as logit_lens
from headmine.causal import path_patching as path_patching
from headmine.causal.engine import intervening as intervening
from headmine.causal.engine import run_with_interventions as run_with_interventions
from headmine.causal.interventions import Gate as Gate
from headmine.causal.interventions import Intervention as Intervention
from headmine.causal.interventions import Mean as Mean
from headmine.causal.interventions import PatchFrom as PatchFrom
from headmine.causal.interventions import Scale as Scale
from headmine.causal.interventions import Steer as Steer
from headmine.causal.interventions import Zero as Zero
