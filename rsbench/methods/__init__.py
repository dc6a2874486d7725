"""Retrieval methods behind one interface (see base.RetrievalMethod) and their registry."""

from ..contracts import Batch, LossOutput
from .base import MethodContext, RetrievalMethod
from .registry import create_method, get_method_spec, list_methods, register_method

__all__ = ["Batch", "LossOutput", "MethodContext", "RetrievalMethod", "create_method", "get_method_spec",
           "list_methods", "register_method"]
