"""One atheris run of one target: ``python -m tests.fuzz._child TARGET [libFuzzer flags and corpus folders]``.

``python -m tests.fuzz`` starts this; libFuzzer ends the process when it is
done, so each target runs in a process of its own.
"""

import os
import sys

import atheris

from tests.fuzz import targets


def main() -> None:
    name = sys.argv[1]
    tolerate = os.environ.get("IMMUNE_FUZZ_STRICT") != "1"
    # Coverage comes from instrumented Python bytecode: ours, and the pure
    # Python that parses for us (tomllib, PyYAML's composer, pySigma); msgspec
    # and libyaml are C and give none.  Only what the target covers is
    # instrumented, and only modules imported from here on can be.
    with atheris.instrument_imports(include=list(targets.TARGETS[name].covers)):
        targets.prepare(name)

    def one(data: bytes) -> None:
        targets.run(name, data, tolerate_open_bugs=tolerate)

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
