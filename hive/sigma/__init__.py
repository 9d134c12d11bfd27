"""The sentinel's rule engine: Sigma rules compiled to matchers of our own.

Drive it from an actor like this::

    engine = RuleEngine(clock=trio.current_time)
    report = engine.load(BUILTIN_RULES, "/etc/immune/rules")   # LoadReport
    alerts = engine.process(event)      # for each wire event (hive sets event.agent)
    alerts += engine.tick()             # about once a second
    if engine.changed():                # poll every few seconds
        report = engine.reload()

``check_rules(DIR)`` is ``immune-node rules check DIR``: a LoadReport whose
``format()`` lists every rule that did not load, with its reason.  The field
mapping and logsources are documented in ``_fields.py``.
"""

from ._compile import Rule, SigmaEvent
from ._engine import EngineStatistics, RuleCost, RuleEngine
from ._errors import KINDS, RuleError
from ._fields import CATEGORIES, FIELDS, SENSOR_KINDS, SUBJECT_FIELDS, sigma_events
from ._index import IndexSummary, RuleIndex
from ._loader import LoadReport, RuleCache, RuleSet, check_rules, load_rules, signature
from ._sets import BUILTIN_RULES, SIGMAHQ_RULES, ListedRule, listing, rule_folders, sigmahq_folder
from ._suppress import SUPPRESS_WINDOW, Suppressor, SuppressorStatistics, suppression_key
from ._update import Installed, UpdateError, update_sigmahq

__all__ = [
    "BUILTIN_RULES", "CATEGORIES", "FIELDS", "KINDS", "SENSOR_KINDS", "SIGMAHQ_RULES", "SUBJECT_FIELDS", "SUPPRESS_WINDOW",
    "EngineStatistics", "IndexSummary", "Installed", "ListedRule", "LoadReport", "Rule", "RuleCache",
    "RuleCost", "RuleEngine", "RuleError", "RuleIndex", "RuleSet", "SigmaEvent", "Suppressor",
    "SuppressorStatistics", "UpdateError", "check_rules", "listing", "load_rules", "rule_folders",
    "sigma_events", "sigmahq_folder", "signature", "suppression_key", "update_sigmahq",
]
