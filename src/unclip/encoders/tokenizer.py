"""A byte-level BPE tokenizer trained on the dataset's own captions.

CLIP (Radford et al. 2021, sec. 2.4) uses a lower-cased byte-pair encoding
(Sennrich et al. 2016) with [SOS]/[EOS] brackets. We train one with Hugging
Face ``tokenizers`` on the training captions, so a tiny dataset gets a tiny
vocabulary; it is saved as ``tokenizer.json`` beside the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch

from unclip.checkpoint import atomic_write_text
from unclip.errors import UnclipError

__all__ = ["BPETokenizer", "train_bpe", "SPECIAL_TOKENS"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


class BPETokenizer:
    """Wraps a ``tokenizers.Tokenizer``; ``__call__`` gives padded ids and a mask."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.token_to_id(PAD)
        self.bos_id = tokenizer.token_to_id(BOS)
        self.eos_id = tokenizer.token_to_id(EOS)
        if None in (self.pad_id, self.bos_id, self.eos_id):
            raise UnclipError("tokenizer.json lacks the <pad>/<bos>/<eos> tokens; retrain the tokenizer")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, captions: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, max_len] (long) and mask [B, max_len] (bool); EOS kept when truncating."""
        encodings = self.tokenizer.encode_batch(list(captions), add_special_tokens=False)
        ids = torch.full((len(captions), max_len), self.pad_id, dtype=torch.long)
        for row, encoding in enumerate(encodings):
            body = encoding.ids[: max_len - 2]
            seq = [self.bos_id, *body, self.eos_id]
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        lengths = torch.tensor([min(len(e.ids), max_len - 2) + 2 for e in encodings])
        mask = torch.arange(max_len)[None, :] < lengths[:, None]
        return ids, mask

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.tokenizer.to_str(pretty=False))

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise UnclipError(f"tokenizer not found: {path} (the encoder directory needs its tokenizer.json)")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises plain Exceptions on bad JSON
            raise UnclipError(f"cannot read tokenizer {path}: {str(exc).splitlines()[0]}") from None


def train_bpe(captions: Iterable[str], vocab_size: int = 1024, min_frequency: int = 1) -> BPETokenizer:
    """Train a lower-cased byte-level BPE on ``captions`` (deterministic for a fixed caption order)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    texts = [c for c in captions if isinstance(c, str) and c.strip()]
    if not texts:
        raise UnclipError("cannot train a tokenizer without captions: the dataset has no non-empty captions")
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(sorted(set(texts)), trainer=trainer)
    return BPETokenizer(tokenizer)
