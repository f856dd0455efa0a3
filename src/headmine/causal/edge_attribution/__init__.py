"""Edge-level circuit discovery: EAP and EAP-IG (Syed et al. 2023; Hanna et al. 2024) on HF decoders.

Modules: ``graph`` (senders, receivers, edges; top-N selection and pruning), ``forward`` (one forward
with the residual split into edges, by hooks: receiver gradients or patched edges), ``scores`` (EAP /
EAP-IG scores), ``evaluate`` (exact edge patching: curves and the check of scores), ``method`` (the
registered ``eap`` causal method). Grouped and multi-query attention are native: k and v receivers
are per KV head (see ``graph``).
"""

from headmine.causal.edge_attribution.evaluate import EdgePatcher as EdgePatcher
from headmine.causal.edge_attribution.evaluate import curves as curves
from headmine.causal.edge_attribution.evaluate import exact_check as exact_check
from headmine.causal.edge_attribution.graph import EdgeGraph as EdgeGraph
from headmine.causal.edge_attribution.graph import prune as prune
from headmine.causal.edge_attribution.graph import top_edges as top_edges
from headmine.causal.edge_attribution.method import EdgeAttributionConfig as EdgeAttributionConfig
from headmine.causal.edge_attribution.method import EdgeAttributionResult as EdgeAttributionResult
from headmine.causal.edge_attribution.scores import edge_scores as edge_scores
