"""BLIP-2 image captioning, visual question answering and image-text retrieval in pure
Rust: no PyTorch.

>>> import blip2
>>> model = blip2.Blip2.load()          # the demo model built into the library
>>> model.caption("examples/circle_and_triangle.png")
'a large green circle and a small blue triangle on a gray background'

Images may be a path (str or os.PathLike), encoded bytes, a PIL image or a uint8 numpy
array of shape HxWx3. Generation options are transformers' ``generate`` keyword names.
The GIL is released while the model computes, so one model can serve many threads.
"""

from ._blip2 import (
    Blip2,
    Blip2Error,
    Chat,
    CheckpointError,
    DeviceError,
    InvalidInputError,
    Retrieval,
    TextIterator,
    __version__,
)

__all__ = [
    "Blip2",
    "Blip2Error",
    "Chat",
    "CheckpointError",
    "DeviceError",
    "InvalidInputError",
    "Retrieval",
    "TextIterator",
    "__version__",
]
