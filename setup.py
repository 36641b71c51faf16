"""Only the compiled part of the package; everything else is declared in pyproject.toml.

The session relay's hot path (src/selkie/proxy/_crelay.c) is a plain CPython C extension.
It is optional: where it cannot be built, the install goes on and the proxy relays in
Python (selkie.proxy.relay), saying so once in its log. (Declared here rather than as
pyproject's ``[tool.setuptools] ext-modules``, which needs setuptools 74.1 or later.)
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "selkie.proxy._crelay",
            sources=["src/selkie/proxy/_crelay.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
