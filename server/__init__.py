"""The live control server: FastAPI routes, persistence, the event pipelines and the hosted
controller that reaches cars through the OEM heads (``adapters/``)."""
