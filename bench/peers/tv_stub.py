"""Import-time stand-in for ``torchvision``, used only inside the DALLE2-pytorch benchmark process.

Why: ``dalle2-pytorch`` 1.15.6 (and ``open-clip-torch``/``x-clip``, which its package
``__init__`` imports) import ``torchvision`` at module load, e.g.
``import torchvision.transforms as T`` and ``Decoder.__init__`` builds ``T.ToPILImage()``.
Installing torchvision here is not possible: its unpinned requirement replaces the CPU torch
with a CUDA build, and the torchvision wheel matching torch 2.13 cannot load its compiled ops
against the CPU build. The benchmark never touches image transforms (it feeds tensors and
precomputed CLIP embeddings), so we serve every ``torchvision`` / ``torchvision.*`` module from
a meta-path finder whose attributes are inert placeholders: they can be imported, subclassed,
instantiated and looked up, and they raise a clear ``RuntimeError`` the moment anything
actually calls them. Nothing is written to disk and nothing outside the calling process is
affected; ``install()`` must run before ``import dalle2_pytorch``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class _PlaceholderMeta(type):
    """Class attributes of a placeholder are placeholders too (``InterpolationMode.BICUBIC``)."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__qualname__}.{name}")


class _Placeholder(metaclass=_PlaceholderMeta):
    def __init__(self, *args, **kwargs):  # building it is allowed (Decoder builds T.ToPILImage())
        pass

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            f"torchvision stub: {type(self).__qualname__} was called; the benchmark process "
            "does not provide torchvision (see bench/README.md)"
        )


def _placeholder(qualname: str) -> type:
    return _PlaceholderMeta(qualname, (_Placeholder,), {"__qualname__": qualname})


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _placeholder(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []  # a package, so ``torchvision.ops.misc`` resolves
        module.__version__ = "0.0.0+benchstub"
        return module

    def exec_module(self, module):
        parent, _, child = module.__name__.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def install() -> None:
    """Serve ``torchvision`` from the stub in this process (idempotent)."""
    if any(isinstance(finder, _StubFinder) for finder in sys.meta_path):
        return
    if "torchvision" in sys.modules:
        return  # a real torchvision is already loaded: leave it alone
    sys.meta_path.insert(0, _StubFinder())
