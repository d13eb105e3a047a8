"""The embedded default (``make demo`` / ``baichuan-audio demo``): every model of the system trained
from scratch on the bundled demo corpus, then used, in minutes on a laptop CPU.

One model config (``configs/tiny.py``'s, with a slightly deeper LLM) is shared by every run, so
the trained parts assemble into one model bundle. Each ``*_steps`` is the length of one training
run; the runs' other settings are those of ``configs/tokenizer_tiny.py``, ``configs/flow_tiny.py``,
``configs/vocoder_demo.py`` and ``configs/tiny.py`` with the data sources of the demo (``demo/pipeline.py`` says which).

Every value can be overridden on the command line (``--config.llm_stage2_steps=300``); the test
suite runs the same path with a few steps per run.
"""
import os

import ml_collections

from baichuan_audio_jax.config import load_config

_HERE = os.path.dirname(os.path.abspath(__file__))
_CORPUS = os.path.join(os.path.dirname(_HERE), "data_pipelines", "demo_corpus")


def get_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.train_manifest = os.path.join(_CORPUS, "train.jsonl")
    cfg.heldout_manifest = os.path.join(_CORPUS, "heldout.jsonl")
    cfg.seed = 0

    model = load_config(os.path.join(_HERE, "tiny.py")).model
    model.llm.num_layers = 4
    model.vocoder = load_config(os.path.join(_HERE, "vocoder_demo.py")).model.vocoder
    cfg.model = model

    # 0. the LLM pretrained on the transcripts as text (the stand-in for a pretrained text LLM)
    cfg.llm_text_steps = 100
    # 1. the audio encoder pretrained as an ASR model (configs/encoder_asr_tiny.py: CTC head), the
    #    stand-in for the pretrained Whisper encoder the paper starts from (0 steps: no pretraining)
    cfg.encoder_asr_steps = 800
    cfg.encoder_asr_speed_perturb = [0.9, 1.0, 1.1]  # speed factors drawn per utterance ([]: off)
    cfg.encoder_asr_spec_augment = True  # SpecAugment-style frequency and time masks
    # 2. the audio tokenizer (configs/tokenizer_tiny.py; schedules scaled to the step count), its
    #    encoder started from step 1's and frozen (bridge, decoder and LLM adapter learn)
    cfg.tokenizer_steps = 300
    cfg.tokenizer_llm_weight = 0.2  # λ2 of the alignment loss (read by the text LLM of step 0)
    cfg.tokenizer_freeze_encoder = True
    # 3. the flow-matching decoder on the frozen tokenizer (configs/flow_tiny.py)
    cfg.flow_steps = 200
    # 4. the audio LLM: stage 1 (audio embeddings + audio head), then stage 2 (all but the text
    #    embedding and the LM head), on ASR, TTS and ITTS sequences mixed by these weights
    cfg.llm_stage1_steps = 50
    cfg.llm_stage2_steps = 600  # 900 drove the training text loss to ~0.004 (memorised) without a held-out gain
    cfg.llm_batch_size = 8
    cfg.llm_seq_len = 256
    cfg.llm_audio_positions = 128  # audio-head positions per row (frames with loss; the rest are dropped and counted)
    cfg.llm_learning_rate = 2e-3
    cfg.llm_weight_decay = 0.1
    cfg.llm_embed_dropout = 0.1  # dropout of the LLM in stages 1 and 2 (train.*_dropout; 0: off)
    cfg.llm_residual_dropout = 0.1
    cfg.llm_mlp_dropout = 0.0
    cfg.mixture = ml_collections.ConfigDict(dict(asr=0.2, asr_concatenated=0.45, tts=0.2, itts=0.15))
    cfg.itts_utterances = 3  # utterances of one voice and speed joined into an ITTS record
    cfg.concatenated_asr = 3200  # ASR records of two training utterances back to back

    # 4. the HiFT vocoder (configs/vocoder_demo.py) on the corpus audio (0: none, Griffin-Lim)
    cfg.vocoder_steps = 0  # 300 trains one; at demo scale it does not yet beat Griffin-Lim (docs/vocoder_training.md)

    # 5. evaluation with the assembled bundle
    cfg.asr_utterances = 0  # held-out utterances transcribed (0: all)
    cfg.tts_sentences = 4  # held-out sentences spoken, written as WAVs and transcribed back
    # a second held-out manifest (e.g. `make_corpus --extra 48 --seed 7`) transcribed too ("": none)
    cfg.extra_heldout_manifest = ""
    return cfg
