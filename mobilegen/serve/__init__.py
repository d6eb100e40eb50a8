"""`mobilegen serve`: the cloud inference server (FastAPI + uvicorn) with micro-batching.

The web framework is imported only when an app is built, so importing the config is cheap.
"""

from mobilegen.serve.config import ModelSource, ServeConfig, parse_model_option


def create_app(config: ServeConfig = ServeConfig()):
    from mobilegen.serve.app import create_app as build

    return build(config)


def serve(config: ServeConfig, sockets=None) -> None:
    from mobilegen.serve.app import serve as run

    run(config, sockets)


__all__ = ["ModelSource", "ServeConfig", "create_app", "parse_model_option", "serve"]
