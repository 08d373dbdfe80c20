"""Build the compiled encoder beside gmemcload.py:

    python setup.py build_ext --inplace

``make install`` runs it.  gmemcload.py uses native_encoder when it is
built, and says so; otherwise it encodes in pure Python, and says that.
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    name='gmemcload-native-encoder',
    ext_modules=cythonize(
        [Extension('native_encoder', ['native_encoder.pyx'],
                   libraries=['z'], extra_compile_args=['-O2'])],
        compiler_directives={'language_level': 3}),
)
