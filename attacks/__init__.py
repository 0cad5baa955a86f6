"""Input-space attacks (through foolbox and torchattacks) and parameter-space attacks.

The input-space API is re-exported here; the parameter-space attacks live in
``robusteval.attacks.parameter`` and are imported from there.
"""

from .adapters import ATTACKS, AttackBudget, AttackContext, AttackResult, AttackSpec, register_attack, unregister_attack
from .input_space import InputAttackOutcome, record_outcome, run_input_attacks, summarize_threat_models
from .recheck import RecheckResult, recheck_adversarial
from .reliability import assess_reliability
from .suites import SUITES, resolve_attacks
from .threat_models import ThreatModel, default_threat_models, parse_eps_options

__all__ = [
    "ATTACKS",
    "SUITES",
    "AttackBudget",
    "AttackContext",
    "AttackResult",
    "AttackSpec",
    "InputAttackOutcome",
    "RecheckResult",
    "ThreatModel",
    "assess_reliability",
    "default_threat_models",
    "parse_eps_options",
    "recheck_adversarial",
    "record_outcome",
    "register_attack",
    "resolve_attacks",
    "run_input_attacks",
    "summarize_threat_models",
    "unregister_attack",
]
