"""The paper's methods as small nn.Modules holding only their learnable tensors.

Add a method by writing one module with a ``@register_method`` class and importing it here.
"""

from promptbias.methods import bias, prompt, zeroshot  # noqa: F401  (registration)
from promptbias.methods.base import METHODS, Method, build_method, clean_classname, register_method

__all__ = ["METHODS", "Method", "build_method", "clean_classname", "register_method"]
