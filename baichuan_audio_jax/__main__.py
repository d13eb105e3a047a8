"""``python -m baichuan_audio_jax`` is the ``baichuan-audio`` command."""
from baichuan_audio_jax.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
