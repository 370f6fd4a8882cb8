"""Type stubs of the blip2 package (the native module blip2._blip2)."""

import os
from typing import Iterator, List, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str

#: A path, encoded image bytes (PNG, JPEG, WebP, BMP, GIF, TIFF), a PIL.Image.Image or a
#: uint8 numpy array of shape HxWx3 (RGB; HxWx4 RGBA and HxW grey are accepted too).
ImageLike = Union[str, "os.PathLike[str]", bytes, bytearray, "npt.NDArray[np.uint8]", object]
Device = Literal["auto", "cpu", "gpu"]
DType = Literal["f32", "f16", "bf16", "q8", "q4"]
EarlyStopping = Union[bool, Literal["never"]]

class Blip2Error(Exception):
    """Base class of every error the blip2 library raises."""

class InvalidInputError(Blip2Error):
    """A bad argument: an unreadable or undecodable image, an invalid generation setting,
    a text longer than the model's positions, an empty batch."""

class CheckpointError(Blip2Error):
    """A checkpoint that cannot be loaded or used: missing or malformed files, missing or
    mismatched tensors, a tokenizer problem, an unsupported architecture."""

class DeviceError(Blip2Error):
    """The device failed: no GPU adapter, out of memory, device lost, a device limit."""

class TextIterator(Iterator[str]):
    """The pieces of text of one generation as they are generated; joined, they are the
    text the non-streaming call returns. Raises the generation's error, if any."""

    def __iter__(self) -> "TextIterator": ...
    def __next__(self) -> str: ...

class Chat:
    """A conversation about one image (from ``Blip2.chat``): each question is asked with
    the earlier turns in the prompt ("Question: q1 Answer: a1. Question: q2 Answer:")."""

    @property
    def turns(self) -> List[Tuple[str, str]]:
        """The (question, answer) pairs so far."""
    def clear(self) -> None:
        """Forgets the conversation (the image features stay)."""
    @overload
    def ask(
        self,
        question: str,
        stream: Literal[False] = False,
        *,
        max_new_tokens: int = 20,
        min_new_tokens: int = 0,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping: EarlyStopping = False,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 50,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        seed: Optional[int] = None,
        eos_token_id: Union[int, List[int], None] = None,
        pad_token_id: Optional[int] = None,
    ) -> str:
        """Answers the question in the context of the earlier turns; records the turn."""
    @overload
    def ask(self, question: str, stream: Literal[True], **generation: object) -> TextIterator: ...

class Blip2:
    """A BLIP-2 captioning / question-answering model (Blip2ForConditionalGeneration).
    Thread-safe; the GIL is released while it computes."""

    @staticmethod
    def load(
        path: Union[str, "os.PathLike[str]", None] = None,
        device: Device = "auto",
        dtype: DType = "f16",
    ) -> "Blip2":
        """Loads a Hugging Face BLIP-2 checkpoint directory, or the demo model built into
        the library when ``path`` is None."""
    @property
    def device(self) -> str:
        """The device the model runs on, e.g. "cpu"."""
    @overload
    def caption(
        self,
        image: ImageLike,
        *,
        stream: Literal[False] = False,
        max_new_tokens: int = 20,
        min_new_tokens: int = 0,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping: EarlyStopping = False,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 50,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        seed: Optional[int] = None,
        eos_token_id: Union[int, List[int], None] = None,
        pad_token_id: Optional[int] = None,
    ) -> str:
        """A caption of the image (greedy, 20 new tokens unless told otherwise)."""
    @overload
    def caption(self, image: Sequence[ImageLike], **generation: object) -> List[str]:
        """Captions of a batch of images, computed together."""
    @overload
    def caption(self, image: ImageLike, *, stream: Literal[True], **generation: object) -> TextIterator:
        """The caption as an iterator over its pieces, as they are generated."""
    @overload
    def ask(
        self,
        image: ImageLike,
        question: str,
        *,
        stream: Literal[False] = False,
        max_new_tokens: int = 20,
        min_new_tokens: int = 0,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping: EarlyStopping = False,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 50,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        seed: Optional[int] = None,
        eos_token_id: Union[int, List[int], None] = None,
        pad_token_id: Optional[int] = None,
    ) -> str:
        """Answers a question about the image (prompt "Question: {question} Answer:")."""
    @overload
    def ask(self, image: Sequence[ImageLike], question: Union[str, Sequence[str]], **generation: object) -> List[str]: ...
    @overload
    def ask(self, image: ImageLike, question: str, *, stream: Literal[True], **generation: object) -> TextIterator: ...
    @overload
    def generate(
        self,
        image: ImageLike,
        prompt: Optional[str] = None,
        *,
        stream: Literal[False] = False,
        max_new_tokens: int = 20,
        min_new_tokens: int = 0,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping: EarlyStopping = False,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 50,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        seed: Optional[int] = None,
        eos_token_id: Union[int, List[int], None] = None,
        pad_token_id: Optional[int] = None,
    ) -> str:
        """Generates text for the image after ``prompt`` (passed verbatim)."""
    @overload
    def generate(self, image: Sequence[ImageLike], prompt: Union[str, Sequence[str], None] = None, **generation: object) -> List[str]: ...
    @overload
    def generate(self, image: ImageLike, prompt: Optional[str] = None, *, stream: Literal[True], **generation: object) -> TextIterator: ...
    def chat(self, image: ImageLike) -> Chat:
        """A conversation about the image; its features are computed once, here."""

class Retrieval:
    """A BLIP-2 image-text retrieval model (Blip2ForImageTextRetrieval). Thread-safe; the
    GIL is released while it computes."""

    @staticmethod
    def load(
        path: Union[str, "os.PathLike[str]"],
        device: Device = "auto",
        dtype: DType = "f32",
    ) -> "Retrieval":
        """Loads a retrieval checkpoint directory (e.g. Salesforce/blip2-itm-vit-g)."""
    @property
    def num_query_tokens(self) -> int: ...
    @property
    def embed_dim(self) -> int: ...
    def match(
        self, image: ImageLike, texts: Union[str, Sequence[str]]
    ) -> Tuple["npt.NDArray[np.float32]", "npt.NDArray[np.float32]"]:
        """(itm, itc) for each text: ITM match probability in [0, 1], ITC similarity in
        [-1, 1]; float32 arrays of len(texts)."""
    def rank(
        self, image: ImageLike, texts: Union[str, Sequence[str]]
    ) -> Tuple["npt.NDArray[np.int64]", "npt.NDArray[np.float32]", "npt.NDArray[np.float32]"]:
        """(indices, itm, itc): the texts' input indices, best ITM probability first, and
        their scores in that order."""
    def embed_images(self, images: Union[ImageLike, Sequence[ImageLike]]) -> "npt.NDArray[np.float32]":
        """Normalised ITC image embeddings, [n_images, num_query_tokens, embed_dim]."""
    def embed_texts(self, texts: Union[str, Sequence[str]]) -> "npt.NDArray[np.float32]":
        """Normalised ITC text embeddings, [n_texts, embed_dim]."""
