"""The model repository (Triton's layout): which models and versions exist, loading, swapping, draining and
unloading them (``manager``), and reading their ``config.pbtxt`` (``pbtxt``)."""
