"""Build the Cython extensions in src/dynafast/_core.

Environment switches:
  DYNAFAST_DEBUG=1        annotated HTML, line tracing, -O0 -g and the C macro DYNAFAST_DEBUG=1
  DYNAFAST_EXTENSIONS=a,b build only these extensions (handy while working on one module)
"""
import glob
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("DYNAFAST_DEBUG", "") not in ("", "0")
ONLY = {name for name in os.environ.get("DYNAFAST_EXTENSIONS", "").split(",") if name}
CORE = os.path.join("src", "dynafast", "_core")


def extensions():
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    compile_args = ["-O3", "-fno-strict-aliasing"] if sys.platform != "win32" else []
    directives = {
        "language_level": 3,
        "boundscheck": False,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": False,
        "embedsignature": True,
    }
    if DEBUG:
        macros += [("DYNAFAST_DEBUG", "1"), ("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
        compile_args = ["-O0", "-g3"]
        directives.update(linetrace=True, boundscheck=True, wraparound=True, initializedcheck=True)
    exts = []
    for pyx in sorted(glob.glob(os.path.join(CORE, "*.pyx"))):
        name = os.path.splitext(os.path.basename(pyx))[0]
        if ONLY and name not in ONLY:
            continue
        exts.append(
            Extension(
                f"dynafast._core.{name}",
                [pyx],
                include_dirs=[CORE, numpy.get_include()],
                define_macros=macros,
                extra_compile_args=compile_args,
            )
        )
    return cythonize(
        exts,
        compiler_directives=directives,
        annotate=DEBUG,
        include_path=[os.path.join("src")],
        nthreads=int(os.environ.get("DYNAFAST_BUILD_JOBS", "0")) or 0,
    )


setup(ext_modules=extensions())
