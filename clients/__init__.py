"""How people meet the server: a Python API and command-line client (`python -m clients.classify`), a load
generator reporting like perf_analyzer (`python -m clients.loadgen`), and the upload page in `clients/web/`."""

from .client import Classification, Client, ClientError, Prediction, ServerUnreachable

__all__ = ["Classification", "Client", "ClientError", "Prediction", "ServerUnreachable"]
