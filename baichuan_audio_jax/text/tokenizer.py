"""Text tokenizers behind one interface: a Hugging Face ``tokenizer.json`` or a sentencepiece model.

The released model uses the Qwen2 BPE vocabulary plus Baichuan's special tokens (a
``tokenizer.json``); small from-scratch models use a sentencepiece model, which
:func:`train_sentencepiece` builds with every special token at the id the model config gives it.

Special tokens are looked up by their reference strings (:data:`SPECIAL_TOKEN_STRINGS`) and must
agree with ``ModelConfig.tokens`` (:func:`check_special_tokens`): sequences are built from the
config's ids, so a tokenizer that disagrees would silently feed the model wrong ids. Text is
encoded with special tokens treated as plain text, so a transcript containing ``<C_Q>`` cannot
inject a role switch.
"""
from __future__ import annotations

import io
import os
from typing import Iterable, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import Tokenizer

from baichuan_audio_jax.config import SpecialTokens

# SpecialTokens field -> reference token string (spec §6.1). pad_token_id is not listed: the
# released model pads with <|endoftext|>, while small models may use a separate id.
SPECIAL_TOKEN_STRINGS = dict(
    eos_token_id="<|endoftext|>",
    im_start_token_id="<|im_start|>",
    im_end_token_id="<|im_end|>",
    system_token_id="<B_SYS>",
    user_system_token_id="<B_USYS>",
    user_token_id="<C_Q>",
    assistant_token_id="<C_A>",
    audio_start_token_id="<audio_start_baichuan>",
    audio_end_token_id="<audio_end_baichuan>",
    audio_pad_token_id="<audio_pad_baichuan>",
    audio_delim_token_id="<audio_delim_baichuan>",
    audiotext_start_token_id="<audiotext_start_baichuan>",
    audiotext_end_token_id="<audiotext_end_baichuan>",
    audiotext_pad_token_id="<audiotext_pad_baichuan>",
    audiogen_start_token_id="<audiogen_start_baichuan>",
    audiogen_end_token_id="<audiogen_end_baichuan>",
)


class TokenizerError(ValueError):
    pass


class TextTokenizer:
    """The interface the sequence builders use."""

    path: str

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added or recognised."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def id_to_token(self, token_id: int) -> str | None:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        """One more than the largest id the tokenizer can produce."""
        raise NotImplementedError


class HFTokenizer(TextTokenizer):
    """A Hugging Face ``tokenizer.json`` (the ``tokenizers`` library; no torch needed)."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._tok = Tokenizer.from_file(path)
        except Exception as e:
            raise TokenizerError(f"{path}: cannot read as a tokenizer.json ({e})") from e
        self._tok.encode_special_tokens = True
        self._vocab_size = max(self._tok.get_vocab(with_added_tokens=True).values()) + 1

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

    @property
    def vocab_size(self) -> int:
        return self._vocab_size


class SentencePieceTokenizer(TextTokenizer):
    """A sentencepiece model; special tokens are CONTROL pieces (never produced from text)."""

    def __init__(self, path: str | None = None, *, model_proto: bytes | None = None):
        self.path = path or "<in-memory sentencepiece model>"
        try:
            self._sp = (spm.SentencePieceProcessor(model_proto=model_proto) if model_proto is not None
                        else spm.SentencePieceProcessor(model_file=path))
        except Exception as e:
            raise TokenizerError(f"{self.path}: cannot read as a sentencepiece model ({e})") from e

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        out, run = [], []
        for i in map(int, ids):
            if self._sp.is_control(i):
                out += [self._sp.decode(run), self._sp.id_to_piece(i)]
                run = []
            else:
                run.append(i)
        return "".join(out + [self._sp.decode(run)])

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        return None if i == self._sp.unk_id() and token != self._sp.id_to_piece(i) else int(i)

    def id_to_token(self, token_id: int) -> str | None:
        return self._sp.id_to_piece(int(token_id)) if 0 <= token_id < self._sp.get_piece_size() else None

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()


def load_text_tokenizer(path: str | os.PathLike) -> TextTokenizer:
    """``tokenizer.json`` (or a directory holding one) → :class:`HFTokenizer`; any other file →
    :class:`SentencePieceTokenizer`."""
    path = os.fspath(path)
    if not path:
        raise TokenizerError("no text tokenizer configured (set data.tokenizer to a tokenizer.json or a "
                             "sentencepiece .model; `baichuan-audio data train-tokenizer` makes one)")
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.exists(path):
        raise TokenizerError(f"text tokenizer not found: {path}")
    return HFTokenizer(path) if path.endswith(".json") else SentencePieceTokenizer(path)


def check_special_tokens(tokenizer: TextTokenizer, tokens: SpecialTokens, vocab_size: int | None = None) -> None:
    """Raises :class:`TokenizerError` listing every special token whose id in the tokenizer differs
    from the model config's (or is absent), and ids beyond the model's vocabulary."""
    problems = []
    for field, text in SPECIAL_TOKEN_STRINGS.items():
        want = getattr(tokens, field)
        got = tokenizer.token_to_id(text)
        if got is None:
            problems.append(f"{text} ({field}): absent from the tokenizer, config id {want}")
        elif got != want:
            problems.append(f"{text} ({field}): tokenizer id {got}, config id {want}")
    if vocab_size is not None and tokenizer.vocab_size > vocab_size:
        problems.append(f"tokenizer has {tokenizer.vocab_size} ids, the model's vocabulary only {vocab_size}")
    if problems:
        raise TokenizerError(f"text tokenizer {tokenizer.path} disagrees with the model config:\n  "
                             + "\n  ".join(problems))


def train_sentencepiece(texts: Iterable[str], out_path: str | os.PathLike, tokens: SpecialTokens, *,
                        vocab_size: int, model_type: str = "unigram") -> SentencePieceTokenizer:
    """Trains a sentencepiece model for a small from-scratch model and writes it to ``out_path``.

    Ordinary pieces take the ids below the smallest special id (at most that many; tiny corpora
    give fewer); ``eos_token_id`` is ``<|endoftext|>``, ``pad_token_id`` a ``<pad>`` piece (both
    among the first ids, with ``<unk>``), and every other special token sits at its config id as a
    CONTROL piece. Unused ids up to ``vocab_size`` (the model's vocabulary) are filled with
    ``<unused_N>`` control pieces, so the result passes :func:`check_special_tokens` for ``tokens``.
    """

    eos = SPECIAL_TOKEN_STRINGS["eos_token_id"]
    fixed = {tokens.eos_token_id: eos}
    if tokens.pad_token_id != tokens.eos_token_id:
        fixed[tokens.pad_token_id] = "<pad>"
    others = {getattr(tokens, f): s for f, s in SPECIAL_TOKEN_STRINGS.items() if f != "eos_token_id"}
    clash = set(fixed) & set(others)
    if clash or len(others) != len(SPECIAL_TOKEN_STRINGS) - 1:
        raise TokenizerError("the model config assigns one id to two special tokens")
    budget = min(others)
    unk_id = min(set(range(len(fixed) + 1)) - set(fixed))
    if max(fixed) > len(fixed) or budget < len(fixed) + 8:
        raise TokenizerError(f"train_sentencepiece needs pad/eos among the first ids and room below the first "
                             f"special id; config has pad {tokens.pad_token_id}, eos {tokens.eos_token_id}, "
                             f"first special id {budget}")
    if max(others) >= vocab_size:
        raise TokenizerError(f"special id {max(others)} does not fit a vocabulary of {vocab_size}")
    pad_id = tokens.pad_token_id if tokens.pad_token_id != tokens.eos_token_id else -1
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t for t in texts if t.strip()]), model_writer=model,
        vocab_size=budget, hard_vocab_limit=False, model_type=model_type, character_coverage=1.0,
        pad_id=pad_id, unk_id=unk_id, bos_id=-1, eos_id=tokens.eos_token_id,
        eos_piece=eos, pad_piece="<pad>", add_dummy_prefix=False, normalization_rule_name="identity",
        minloglevel=2)
    proto = pb.ModelProto()
    proto.ParseFromString(model.getvalue())
    for i in range(len(proto.pieces), vocab_size):
        piece = proto.pieces.add()
        piece.piece = others.get(i, f"<unused_{i}>")
        piece.type = pb.ModelProto.SentencePiece.CONTROL
        piece.score = 0.0
    out_path = os.fspath(out_path)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    data = proto.SerializeToString()
    with open(out_path, "wb") as f:
        f.write(data)
    tok = SentencePieceTokenizer(out_path)
    check_special_tokens(tok, tokens, vocab_size)
    return tok
