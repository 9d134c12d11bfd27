"""docs/ATTACK.md is what matrix.py makes of today's rules and simulations (no kernel needed)."""

from . import matrix
from .simulations import SIMULATIONS


def test_the_attack_matrix_is_current():
    assert matrix.main(["--check"]) == 0, "run: .venv/bin/python -m tests.e2e.attacks.matrix"


def test_every_simulated_technique_is_a_linux_technique():
    listed = {t.id.lower() for t in matrix.techniques()}
    assert {s.technique for s in SIMULATIONS} <= listed


def test_at_least_sixty_techniques_are_proven():
    assert len({s.technique for s in SIMULATIONS}) >= 60
