"""Fleet policy: bundles of sensor policy, rules and playbooks that the hive
signs and assigns to agents by their labels (see ``_bundle``).  Agents and
the hive both import this package; it imports neither."""

from ._bundle import LABEL_KEY, Bundle, Signed, SigningKey, assigned, encode, selects, verify
from ._errors import BundleRefused, FleetError
from ._keeper import Keeper

__all__ = ["LABEL_KEY", "Bundle", "assigned", "BundleRefused", "FleetError", "Keeper", "Signed", "SigningKey",
           "encode", "selects", "verify"]
