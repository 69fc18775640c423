"""The C loop of the exact solver (`derisk/planner/_bellman.c`), an optional extension:
without a C compiler the install goes on and the numpy loop runs instead."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "derisk.planner._bellman",
            ["derisk/planner/_bellman.c"],
            # no fused multiply-adds: the same rounding as the numpy reference
            extra_compile_args=["-O3", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
