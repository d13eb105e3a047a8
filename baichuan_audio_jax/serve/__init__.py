"""``baichuan-audio serve``: an HTTP/WebSocket speech server over a model bundle.

* :mod:`.scheduler` gathers concurrent requests into batches for the decoding engine, streams
  text and audio per request, and stops rows whose client went away or whose time ran out.
* :mod:`.app` is the web application: OpenAI-style transcription and speech endpoints, a
  spoken-chat WebSocket, health, Prometheus metrics and the voice-chat page (``static/``).
"""
