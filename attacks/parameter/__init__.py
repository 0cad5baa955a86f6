"""Parameter-space attacks: weight noise, adversarial weights, tangent shift and single-example updates.

Every function here evaluates the model in eval mode through ``torch.func.functional_call``
with perturbed copies of its parameters, never touching buffers, and restores the model bit
for bit on return or error (:func:`preserved_state`).
"""

from .adversarial_weights import AdversarialWeightCurve, adversarial_weight_curve, adversarial_weight_radius
from .section import parameter_space_section
from .single_example_update import SingleExampleUpdateResult, single_example_update_attack
from .state import preserved_state
from .tangent_shift import TangentShiftResult, tangent_shift
from .weight_noise import WeightNoiseCurve, noise_sharpness, weight_noise_curve, weight_noise_radius

__all__ = [
    "AdversarialWeightCurve",
    "SingleExampleUpdateResult",
    "TangentShiftResult",
    "WeightNoiseCurve",
    "adversarial_weight_curve",
    "adversarial_weight_radius",
    "noise_sharpness",
    "parameter_space_section",
    "preserved_state",
    "single_example_update_attack",
    "tangent_shift",
    "weight_noise_curve",
    "weight_noise_radius",
]
