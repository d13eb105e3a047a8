"""One module per fixture component; each registers a runner with ``@register``."""
