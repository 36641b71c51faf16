"""Only the compiled part of the package; everything else is declared in pyproject.toml.

The session relay's hot path (src/selkie/proxy/_crelay.c) and the pooler's fast lane
(src/selkie/proxy/pooler/_lane.c) are plain CPython C extensions. They are optional: where
they cannot be built, the install goes on and the proxy relays and pools in Python
(selkie.proxy.relay, selkie.proxy.pooler), the relay saying so once in its log. (Declared here rather than as
pyproject's ``[tool.setuptools] ext-modules``, which needs setuptools 74.1 or later.)
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            name,
            sources=sources,
            depends=depends,
            include_dirs=["src/selkie/proxy"],  # _selkie_io.h, shared by both
            extra_compile_args=[
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-fvisibility=hidden",  # only PyInit_* is the module's to show
            ],
            optional=True,
        )
        for name, sources, depends in (
            (
                "selkie.proxy._crelay",
                [f"src/selkie/proxy/_crelay{part}.c" for part in ("", "_core", "_scan")],
                ["src/selkie/proxy/_crelay.h", "src/selkie/proxy/_selkie_io.h"],
            ),
            (
                "selkie.proxy.pooler._lane",
                [
                    f"src/selkie/proxy/pooler/_lane{part}.c"
                    for part in ("", "_core", "_objects", "_scan")
                ],
                ["src/selkie/proxy/pooler/_lane.h", "src/selkie/proxy/_selkie_io.h"],
            ),
        )
    ]
)
