"""The end-to-end demo: every model trained from scratch on a small corpus, assembled into a
model bundle and evaluated (``baichuan-audio demo``; :mod:`.pipeline` lists the stages)."""
