"""Replayer: deterministic teacher-forced replay of a bundle, interventions, fidelity proof.

rp = Replayer(load_bundle("bundles/australia"))
rp.run((Intervention("model.layers.10", "zero", "last"),)).fixed
"""

from forensics.replay.fidelity import Fidelity
from forensics.replay.interventions import Intervention, InterventionSet
from forensics.replay.options import ReplayOptions
from forensics.replay.replayer import Outcome, Replayer
from forensics.replay.sources import SourceBank

__all__ = ["Fidelity", "Intervention", "InterventionSet", "Outcome", "ReplayOptions", "Replayer", "SourceBank"]
